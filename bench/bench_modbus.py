"""Benchmark: the Modbus source polling 500 tags on 5 units at 10 Hz against a local server process.

    python bench/bench_modbus.py [--seconds 60] [--tags 500] [--units 5] [--rate 10]

Prints requests per cycle, the achieved poll rate, the jitter of the interval between cycles
(p50/p99), and CPU seconds per 1000 tag reads of the agent side (the server's own CPU is
printed apart: it runs in another process, as a PLC would).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.core.model import Quality, Reading
from agent.sources.base import SourceContext, TagBinding
from agent.sources.modbus.config import ModbusConnection
from agent.sources.modbus.source import ModbusSource
from tests.conftest import free_port
from tests.support.fixtures_modbus import ModbusServer, binding


def tag_map(tags: int, units: int) -> list[TagBinding]:
    """A line's worth of tags per unit: counters, process values, flags, status bits."""
    per_unit = tags // units
    out: list[TagBinding] = []
    for unit in range(1, units + 1):
        mix = [binding(holding=100 + 2 * i, type="uint32", word_order="little", unit=unit)
               for i in range(per_unit * 4 // 10)]                                  # counters
        mix += [binding(holding=400 + 3 * i, unit=unit) for i in range(per_unit // 10)]  # stop reasons
        mix += [binding(input=2 * i, type="float32", unit=unit) for i in range(per_unit * 2 // 10)]
        mix += [binding(coil=5 * i, unit=unit) for i in range(per_unit * 15 // 100)]
        mix += [binding(discrete=i, unit=unit) for i in range(per_unit * 5 // 100)]
        mix += [binding(holding=600 + i // 16, bit=i % 16, unit=unit)
                for i in range(per_unit - len(mix))]                               # status word bits
        out += mix
    return out


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def bench(seconds: float, tags: int, units: int, rate: float) -> None:
    server = ModbusServer(free_port(), {"units": {str(u): {} for u in range(1, units + 1)}}).start()
    assert server.proc is not None
    bindings = tag_map(tags, units)
    times: list[float] = []
    counts = {"reads": 0, "bad": 0}
    first = asyncio.Event()

    async def emit(readings: Sequence[Reading], *, durable: bool = False) -> None:
        first.set()
        times.append(time.monotonic())
        counts["reads"] += len(readings)
        counts["bad"] += sum(r.quality is not Quality.GOOD for r in readings)

    ctx = SourceContext(emit=emit, connection_up=lambda n: None, connection_down=lambda n, why: print(why),
                        secret=lambda c, k: None)
    config = ModbusConnection.model_validate({"host": "127.0.0.1", "port": server.port, "poll": 1 / rate})
    source = ModbusSource("bench", config, bindings, ctx)
    task = asyncio.create_task(source.run())
    try:
        await first.wait()
        start_reads, start_cycles, requests0 = counts["reads"], len(times), server.requests()
        cpu0, wall0, server_cpu0 = time.process_time(), time.monotonic(), cpu_of(server.proc.pid)
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        server_cpu = cpu_of(server.proc.pid) - server_cpu0
        reads, cycles = counts["reads"] - start_reads, len(times) - start_cycles
        requests = server.requests() - requests0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.stop()
    intervals = [b - a for a, b in zip(times[start_cycles - 1 :], times[start_cycles:], strict=False)]
    assert source.poller is not None
    print(f"tags {len(bindings)} on {units} units, poll {1000 / rate:.0f} ms, {wall:.1f} s")
    print(f"requests per cycle      {len(source.poller.blocks)} planned, {requests / cycles:.2f} measured "
          f"(server side)")
    print(f"poll rate achieved      {cycles / wall:.2f} Hz of {rate:g} Hz ({source.overruns} overruns)")
    print(f"interval p50 / p99      {percentile(intervals, 50) * 1000:.2f} / "
          f"{percentile(intervals, 99) * 1000:.2f} ms  (mean {statistics.fmean(intervals) * 1000:.2f} ms)")
    print(f"tag reads               {reads} ({counts['bad']} bad)")
    print(f"agent CPU per 1000 tag reads   {cpu / reads * 1000 * 1000:.2f} ms "
          f"({cpu:.2f} s CPU in {wall:.1f} s: {cpu / wall * 100:.1f}% of a core)")
    print(f"server CPU (other process)     {server_cpu:.2f} s ({server_cpu / wall * 100:.1f}% of a core)")
    print(f"RESULT poll_hz={cycles / wall:.2f} overruns={source.overruns} "
          f"interval_p99_ms={percentile(intervals, 99) * 1000:.2f} "
          f"cpu_ms_per_1000_reads={cpu / reads * 1000 * 1000:.2f} requests_per_cycle={requests / cycles:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--tags", type=int, default=500)
    parser.add_argument("--units", type=int, default=5)
    parser.add_argument("--rate", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(bench(args.seconds, args.tags, args.units, args.rate))


if __name__ == "__main__":
    main()
