"""Benchmark: the CPU of one group commit, by how many machines it carries.

    python bench/bench_commit.py [--commits 2000]

What the pipeline does at each group commit (agent/outbox/store.py `Outbox.commit`): the logic
state of every machine that changed, its counter call (a new one or the pending one merged),
and some parameter values, in one SQLite transaction in aiosqlite's thread; `synced` is the
commit that releases MQTT acknowledgements (synchronous=FULL: the WAL is on disk). The CPU is
the whole process's (both threads), per commit; the database is a real file in a temporary
directory (on this machine's disk, so the sync's cost is its fsync).

Multiply by the commits a second to get the agent's cost of its guarantees: the footprint
bench's plant commits about 10 times a second with 30 machines changed in each.

Last line: RESULT commit_us_10=<us> commit_us_30=<us> commit_us_100=<us> synced_us_30=<us>
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.core.model import CounterChanged, Event, ParametersChanged
from agent.outbox.store import Outbox


def state(total: int) -> dict[str, object]:
    """A machine's logic state as the logic dumps it (one counter, a run state)."""
    return {"v": 1, "counters": {"count": {
        "key": '{"holding": 0, "type": "uint32"}', "where": "093a6a6d20f090ed", "total": total,
        "raw": total, "pending": None, "t": time.monotonic(), "wall": time.time()}},
        "run": {"sent": True, "type": None, "idle": False, "stable": True}}


async def per_commit(machines: int, commits: int, synced: bool) -> float:
    """Microseconds of process CPU per commit of `machines` changed machines."""
    with tempfile.TemporaryDirectory(prefix="bench-commit-") as folder:
        box = await Outbox.open(os.path.join(folder, "agent.db"))
        names = [f"M{i:03d}" for i in range(machines)]
        try:
            for k in range(50):  # warm up: the tables and the pending calls exist
                await box.commit({m: state(k) for m in names}, [CounterChanged(m, k) for m in names],
                                 time.time())
            start = time.process_time()
            for k in range(50, 50 + commits):
                events: list[Event] = [CounterChanged(m, k) for m in names]
                events += [ParametersChanged(m, {"temp": 20.0 + k % 7}) for m in names[: machines // 3]]
                await box.commit({m: state(k) for m in names}, events, time.time(), sync=synced)
            return (time.process_time() - start) / commits * 1e6
        finally:
            await box.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commits", type=int, default=2000, help="commits measured per case")
    args = parser.parse_args()
    figures: dict[str, float] = {}
    for machines in (10, 30, 100):
        figures[f"commit_us_{machines}"] = us = asyncio.run(per_commit(machines, args.commits, False))
        print(f"{machines:4d} machines a commit: {us:6.0f} us of CPU per commit", flush=True)
    figures["synced_us_30"] = us = asyncio.run(per_commit(30, args.commits, True))
    print(f"  30 machines, synced: {us:6.0f} us of CPU per commit")
    print("RESULT " + " ".join(f"{k}={v:.0f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
