"""Benchmark: synthetic readings through machine logic + SQLite outbox (group commit).

    python bench/bench_pipeline.py [--readings 500000] [--machines 10 100 1000]

Prints readings/s, CPU seconds per million readings and peak RSS for each machine count
(each measured in a fresh process, so peak RSS is its own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config.loader import parse_config
from agent.core.model import Reading
from agent.logic.machine import Logic
from agent.outbox.store import Outbox

COMMIT_EVERY = 20_000  # readings per group commit (~200 ms of a busy line at 100k/s)


def _config(machines: int, db: str) -> str:
    lines = [f"storage: {{path: {db}}}", "connections:", "  sim: {simulated: {}}", "machines:"]
    for i in range(machines):
        u = f"u{i}"
        lines += [
            f"  M{i}:",
            "    connection: sim",
            f"    counter: {{signal: count, unit: {u}}}",
            f"    waste: {{Scrap: {{signal: scrap, unit: {u}}}}}",
            f"    running: {{signal: running, unit: {u}}}",
            f"    parameters: {{temp: {{signal: temperature, unit: {u}, deadband: 0.5}}}}",
        ]
    return "\n".join(lines) + "\n"


async def _run(machines: int, total: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config(_config(machines, f"{tmp}/bench.db"))
        keys = {
            code: {
                "count": m.counter.tag if m.counter else "",
                "scrap": m.waste["Scrap"].tag,
                "running": m.running.tag if m.running else "",
                "temp": m.parameters["temp"].tag,
            }
            for code, m in cfg.machines.items()
        }
        outbox = await Outbox.open(cfg.storage.path)
        logic = Logic(cfg.machines, await outbox.load_states())
        codes = list(cfg.machines)
        readings_per_round = 4 * len(codes)
        events = 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        done, since_commit, step = 0, 0, 0
        now = time.time()
        pending: list[object] = []
        while done < total:
            step += 1
            now += 0.01
            batch: list[Reading] = []
            for i, code in enumerate(codes):
                k = keys[code]
                batch.append(Reading("sim", k["count"], step * 3 + i, received_time=now))
                batch.append(Reading("sim", k["scrap"], step // 10, received_time=now))
                batch.append(Reading("sim", k["running"], (step // 500) % 4 != 3, received_time=now))
                batch.append(Reading("sim", k["temp"], 180.0 + (step % 7) * 0.3, received_time=now))
            for reading in batch:
                pending.extend(logic.apply(reading, now))
            pending.extend(logic.tick(now))
            done += readings_per_round
            since_commit += readings_per_round
            if since_commit >= COMMIT_EVERY or done >= total:
                events += len(pending)
                await outbox.commit(logic.dirty_states(), pending, now)  # type: ignore[arg-type]
                pending, since_commit = [], 0
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        depth = sum(s.depth for s in await outbox.stats(time.time()))
        await outbox.close()
    return {
        "machines": machines, "readings": done, "events": events, "queued_calls": depth,
        "readings_per_s": done / wall, "cpu_s_per_million": cpu / done * 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=400_000)
    parser.add_argument("--machines", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(asyncio.run(_run(args.one, args.readings))))
        return
    print(f"{'machines':>9} {'readings':>9} {'readings/s':>11} {'CPU s/1M':>9} {'peak RSS MB':>11} "
          f"{'events':>8} {'queued':>7}")
    results = []
    for machines in args.machines:
        out = subprocess.run([sys.executable, __file__, "--one", str(machines), "--readings",
                              str(args.readings)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['machines']:>9} {r['readings']:>9} {r['readings_per_s']:>11,.0f} "
              f"{r['cpu_s_per_million']:>9.2f} {r['peak_rss_mb']:>11.1f} {r['events']:>8} "
              f"{r['queued_calls']:>7}")
        results.append(r)
    print("RESULT " + " ".join(f"readings_per_s_{r['machines']}={r['readings_per_s']:.0f} "
                               f"cpu_s_per_million_{r['machines']}={r['cpu_s_per_million']:.2f} "
                               f"peak_rss_mb_{r['machines']}={r['peak_rss_mb']:.1f}" for r in results))


if __name__ == "__main__":
    main()
