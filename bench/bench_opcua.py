"""Benchmark: many OPC UA monitored items changing fast, through the source, machine logic and outbox.

    python bench/bench_opcua.py [--items 2000] [--rate 10] [--seconds 60]

A test server process (tests/support/opcua_server.py --bench) writes every item `--rate` times a second,
each with the wall-clock time of its write as its value. The agent side (this process) runs the
real OpcUaSource into the real Pipeline (machine logic + SQLite outbox with group commit); the
items are parameters of machines of ten. Prints the notifications handled per second, the
latency from the server's write to the outbox commit that holds it (p50/p99), and CPU seconds of
this process per 10,000 notifications. The first seconds (connect, initial values) are not
measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config.loader import parse_config
from agent.core.metrics import Metrics
from agent.core.model import Quality, Reading
from agent.logic.machine import Logic
from agent.outbox.store import Outbox
from agent.runtime.pipeline import Pipeline
from agent.sources.opcua.source import OpcUaSource
from tests.conftest import free_port
from tests.support.fixtures_opcua import NAMESPACE, OpcUaServer

WARM_UP = 5.0


def _config(url: str, items: int, db: str) -> str:
    lines = [f"storage: {{path: {db}, commit_interval: 200ms}}", "connections:",
             f"  plc: {{opcua: {{url: '{url}', sampling: 50ms, publishing: 100ms, queue_size: 5}}}}",
             "machines:"]
    for m in range(0, items, 10):
        lines += [f"  M{m // 10}:", "    connection: plc", "    parameters:"]
        lines += [f"      p{i}: {{node: 'nsu={NAMESPACE};s=B.{i}'}}" for i in range(m, min(m + 10, items))]
    return "\n".join(lines) + "\n"


class Probe:
    """Counts the notifications the source emits and stamps them when their commit is done."""

    def __init__(self) -> None:
        self.measuring = False
        self.notifications = 0
        self.pending: list[float] = []
        self.latencies: list[float] = []  # server write -> outbox commit
        self.received: list[float] = []  # server write -> handed to the logic

    def applied(self, readings: list[Reading]) -> None:
        if not self.measuring:
            return
        now = time.time()
        for r in readings:
            if r.quality is Quality.GOOD and isinstance(r.value, float) and r.value > 1e9:
                self.notifications += 1
                self.pending.append(r.value)
                self.received.append(now - r.value)

    def committed(self) -> None:
        now = time.time()
        self.latencies.extend(now - t for t in self.pending)
        self.pending.clear()


async def _run(items: int, rate: float, seconds: float) -> dict[str, Any]:
    server = OpcUaServer(free_port(), machines=0, bench=items, rate=rate).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = parse_config(_config(server.url, items, f"{tmp}/bench.db"))
            outbox = await Outbox.open(cfg.storage.path)
            metrics = Metrics()
            pipeline = Pipeline(Logic(cfg.machines, await outbox.load_states()), outbox, metrics,
                                cfg.storage.commit_interval, lambda: None)
            probe = Probe()
            _instrument(pipeline, probe)
            conn = cfg.connections["plc"]
            ups: list[str] = []
            ctx_ = _context(pipeline, ups)
            source = OpcUaSource("plc", conn.config, list(conn.tags.values()), ctx_)
            tasks = [asyncio.create_task(pipeline.run()), asyncio.create_task(source.run())]
            await asyncio.sleep(WARM_UP)
            probe.measuring = True
            cpu0, wall0, ticks0 = time.process_time(), time.perf_counter(), server.ticks()
            await asyncio.sleep(seconds)
            probe.measuring = False
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            ticks = server.ticks() - ticks0
            await asyncio.sleep(0.5)  # the last commit
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await outbox.close()
    finally:
        server.close()
    lat, rec = sorted(probe.latencies), sorted(probe.received)
    return {
        "items": items, "rate": rate, "seconds": wall, "notifications": probe.notifications,
        "per_s": probe.notifications / wall, "written_per_s": ticks * items / wall,
        "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99),
        "recv_p50_ms": _pct(rec, 0.5), "recv_p99_ms": _pct(rec, 0.99),
        "cpu_per_10k": cpu / probe.notifications * 10_000 if probe.notifications else float("nan"),
        "cpu_share": cpu / wall, "connection": ups,
    }


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] * 1000 if values else float("nan")


def _instrument(pipeline: Pipeline, probe: Probe) -> None:
    """Hook the pipeline's apply and commit steps (benchmark only)."""
    apply, commit = pipeline._apply, pipeline.commit

    def applied(batch: Any) -> None:
        apply(batch)
        probe.applied(list(batch.readings))

    async def committed() -> None:
        await commit()
        probe.committed()

    pipeline._apply = applied  # type: ignore[method-assign]
    pipeline.commit = committed  # type: ignore[method-assign]


def _context(pipeline: Pipeline, states: list[str]) -> Any:
    from agent.sources.base import SourceContext

    return SourceContext(emit=pipeline.emit, connection_up=lambda n: states.append("up"),
                         connection_down=lambda n, why: states.append(f"down: {why}"),
                         secret=lambda c, k: None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=10.0, help="changes per item per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured time (after a warm-up)")
    args = parser.parse_args()
    r = asyncio.run(_run(args.items, args.rate, args.seconds))
    print(f"{r['items']} monitored items changing at {r['rate']:g} Hz, measured {r['seconds']:.0f} s "
          f"(connection: {', '.join(r['connection'])})")
    print(f"  server writes: {r['written_per_s']:,.0f}/s (asked for {r['items'] * r['rate']:,.0f}/s)")
    print(f"  notifications handled: {r['per_s']:,.0f}/s")
    print(f"  latency server write -> outbox commit: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms "
          f"(-> machine logic: p50 {r['recv_p50_ms']:.0f} ms, p99 {r['recv_p99_ms']:.0f} ms)")
    print(f"  CPU (agent process): {r['cpu_per_10k']:.3f} s per 10,000 notifications "
          f"({r['cpu_share']:.0%} of one core)")
    print(f"RESULT notifications_per_s={r['per_s']:.0f} written_per_s={r['written_per_s']:.0f} "
          f"p50_ms={r['p50_ms']:.0f} p99_ms={r['p99_ms']:.0f} cpu_s_per_10k={r['cpu_per_10k']:.3f}")


if __name__ == "__main__":
    main()
