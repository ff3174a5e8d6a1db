"""Benchmark: 200 topics publishing at 50 Hz through a local Mosquitto into the agent's outbox.

    python bench/bench_mqtt.py [--seconds 60] [--topics 200] [--rate 50] [--inflight 20]

Publishers run in other processes (a gateway would be another machine); the agent side is
the real MQTT source feeding the real pipeline (machine logic + SQLite outbox, one durable
commit before each batch of PUBACKs). Prints messages/s handled, the latency from publish to
committed in the outbox (p50/p99, from a timestamp in each payload), and the agent process's
CPU seconds per 100,000 messages. `--inflight` is Mosquitto's max_inflight_messages (default 20,
as a stock Mosquitto): how many unacknowledged messages the agent may hold, which bounds the
throughput to inflight / commit time, since an acknowledgement waits for the SQLite commit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config.loader import parse_config
from agent.core.metrics import Metrics
from agent.core.model import Reading
from agent.logic.machine import Logic
from agent.outbox.store import Outbox
from agent.runtime.pipeline import Pipeline
from agent.sources.base import SourceContext
from agent.sources.mqtt.config import MqttConnection
from agent.sources.mqtt.source import MqttSource
from tests.support.fixtures_mqtt import Mosquitto

PUBLISHERS = 2


def _config(topics: int, port: int, db: str) -> str:
    machines = "".join(
        f"  M{i:03d}:\n    connection: broker\n"
        f"    counter: {{topic: bench/line/m{i:03d}/count, json: count, timestamp: ts, type: uint32}}\n"
        for i in range(topics))
    return (f"storage: {{path: {db}}}\nconnections:\n  broker:\n"
            f"    mqtt: {{host: 127.0.0.1, port: {port}, client_id: bench-agent}}\nmachines:\n{machines}")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def _text(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("!H", len(raw)) + raw


def _publish(port: int, topics: Sequence[int], rate: float, seconds: float, start_at: float) -> None:
    """One gateway: every 1/rate s one QoS 1 message on each of its topics (another process).

    A bare MQTT 3.1.1 client on a socket rather than paho: a Python paho publisher at thousands
    of messages a second would take the CPU the agent is measured on (the gateway is another
    machine in real life). PUBACKs are read and discarded by a thread.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(_packet(0x10, _text("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60)
                         + _text(f"bench-gateway-{topics[0]}")))
    if sock.recv(4)[3] != 0:
        raise RuntimeError("the broker refused the bench publisher")
    threading.Thread(target=lambda: [None for _ in iter(lambda: sock.recv(65536), b"")], daemon=True).start()
    names = {i: _text(f"bench/line/m{i:03d}/count") for i in topics}
    period, tick, mid = 1.0 / rate, 0, 0
    time.sleep(max(0.0, start_at - time.time()))
    while tick * period < seconds:
        now = time.time()
        chunk = bytearray()
        for i in topics:
            mid = mid % 65535 + 1
            payload = f'{{"count": {tick + 1}, "ts": {now:.6f}}}'.encode()
            chunk += _packet(0x32, names[i] + struct.pack("!H", mid) + payload)
        sock.sendall(chunk)
        tick += 1
        time.sleep(max(0.0, start_at + tick * period - time.time()))
    time.sleep(1.0)  # the last PUBACKs
    sock.sendall(_packet(0xE0, b""))
    sock.close()


class Meter:
    """Wraps the pipeline's emit: counts messages and their publish-to-committed latency."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.done = asyncio.Event()
        self.latencies: list[float] = []
        self.count = 0
        self.started: float | None = None
        self.cpu_at_start = 0.0

    def record(self, readings: Sequence[Reading]) -> None:
        done = time.time()
        if self.started is None:
            self.started, self.cpu_at_start = time.monotonic(), time.process_time()
        self.count += len(readings)
        self.latencies.extend(done - r.source_time for r in readings if r.source_time is not None)
        if self.count >= self.expected:
            self.done.set()


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


async def bench(seconds: float, topics: int, rate: float, inflight: int,
                synced: bool = True) -> tuple[float, float, float]:
    """(messages/s, p50 ms, p99 ms). `synced=False` measures what the agent did before issue 10
    item 13: the commit releasing PUBACKs not synced to disk (synchronous=NORMAL alone)."""
    with tempfile.TemporaryDirectory() as folder:
        broker = Mosquitto(Path(folder) / "broker", inflight=inflight).start()
        try:
            assert broker.proc is not None
            return await _run(broker.port, broker.proc.pid, Path(folder) / "agent.db", seconds, topics,
                              rate, synced)
        finally:
            broker.stop()


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of another process so far (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _run(port: int, broker_pid: int, db: Path, seconds: float, topics: int, rate: float,
               synced: bool) -> tuple[float, float, float]:
    cfg = parse_config(_config(topics, port, str(db)))
    outbox = await Outbox.open(str(db))
    if not synced:
        commit = outbox.commit

        async def unsynced(*args: Any, sync: bool = False) -> None:
            await commit(*args, sync=False)

        outbox.commit = unsynced  # type: ignore[method-assign]
    metrics = Metrics()
    pipeline = Pipeline(Logic(cfg.machines, await outbox.load_states()), outbox, metrics,
                        cfg.storage.commit_interval, lambda: None)
    meter = Meter(int(seconds * rate) * topics)

    async def emit(readings: Sequence[Reading], *, durable: bool = False) -> None:
        await pipeline.emit(readings, durable=durable)
        meter.record(readings)

    conn = cfg.connections["broker"]
    assert isinstance(conn.config, MqttConnection)
    up = asyncio.Event()
    ctx = SourceContext(emit=emit, connection_up=lambda _: up.set(), connection_down=lambda *_: None,
                        secret=lambda *_: None, metrics=metrics)
    source = MqttSource("broker", conn.config, list(conn.tags.values()), ctx)
    tasks = [asyncio.create_task(pipeline.run()), asyncio.create_task(source.run())]
    await asyncio.wait_for(up.wait(), 10)
    start_at = time.time() + 1.0
    share = [list(range(topics))[k::PUBLISHERS] for k in range(PUBLISHERS)]
    procs = [multiprocessing.Process(target=_publish, args=(port, s, rate, seconds, start_at)) for s in share]
    for p in procs:
        p.start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(meter.done.wait(), seconds + 60)
    elapsed = time.monotonic() - (meter.started or time.monotonic())
    cpu = time.process_time() - meter.cpu_at_start
    others = {"mosquitto": cpu_of(broker_pid), "publishers": sum(cpu_of(p.pid or 0) for p in procs)}
    for p in procs:
        p.join(30)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await outbox.close()
    _report(meter, elapsed, cpu, topics, rate, others)
    lat = meter.latencies
    return (meter.count / max(elapsed, 1e-9), percentile(lat, 50) * 1000, percentile(lat, 99) * 1000)


def _report(meter: Meter, elapsed: float, cpu: float, topics: int, rate: float,
            others: dict[str, float]) -> None:
    lat, expected = meter.latencies, meter.expected
    print(f"offered:   {topics} topics x {rate:g} Hz = {topics * rate:,.0f} messages/s, "
          f"{expected:,} messages")
    print(f"handled:   {meter.count:,} messages in {elapsed:.1f}s = {meter.count / max(elapsed, 1e-9):,.0f} "
          f"messages/s{'' if meter.count >= expected else '  (INCOMPLETE)'}")
    print(f"latency:   publish -> committed in the outbox: p50 {percentile(lat, 50) * 1000:.1f} ms, "
          f"p99 {percentile(lat, 99) * 1000:.1f} ms, max {max(lat, default=0) * 1000:.1f} ms")
    print(f"CPU:       {cpu:.1f}s of the agent process = {cpu / max(meter.count, 1) * 100_000:.2f} "
          f"CPU seconds per 100,000 messages")
    meanwhile = ", ".join(f"{k} {v:.1f}s" for k, v in others.items())
    print(f"           (meanwhile on the same machine: {meanwhile}"
          f" CPU, {os.cpu_count()} cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--topics", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second per topic")
    parser.add_argument("--inflight", type=int, default=20,
                        help="Mosquitto max_inflight_messages (20: its default)")
    parser.add_argument("--compare-sync", action="store_true",
                        help="also run with the commit before the PUBACKs not synced: what syncing costs")
    args = parser.parse_args()
    synced = asyncio.run(bench(args.seconds, args.topics, args.rate, args.inflight))
    figures = f"synced: {synced[0]:,.0f} msg/s p50 {synced[1]:.1f} ms p99 {synced[2]:.1f} ms"
    if args.compare_sync:
        print("--- again, the commit before the PUBACKs not synced (as before issue 10 item 13):")
        plain = asyncio.run(bench(args.seconds, args.topics, args.rate, args.inflight, synced=False))
        figures += (f"; not synced: {plain[0]:,.0f} msg/s p50 {plain[1]:.1f} ms p99 {plain[2]:.1f} ms"
                    f"; sync costs {(1 - synced[0] / max(plain[0], 1e-9)) * 100:.0f}% throughput")
    print(f"RESULT mqtt {args.topics}x{args.rate:g}Hz inflight {args.inflight}: {figures}")


if __name__ == "__main__":
    main()
