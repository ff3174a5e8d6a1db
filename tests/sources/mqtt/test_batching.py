"""How the MQTT source groups messages into commits: a burst is one commit, a small window never stalls it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from agent.sources.mqtt.source import ACK_BATCH, MqttSource
from tests.support.fixtures_mqtt import Mosquitto, Publisher, Recorder, line, running, until

COUNTERS = "".join(f"""
  M{i}:
    connection: broker
    counter: {{topic: plant/m{i}, json: count, type: uint32}}
""" for i in range(ACK_BATCH))


def burst(n: int, value: int) -> list[tuple[str, str]]:
    return [(f"plant/m{i % ACK_BATCH}", f'{{"count": {value + i}}}') for i in range(n)]


@contextlib.asynccontextmanager
async def source_on(folder: Path, inflight: int, commit_interval: float = 0.2
                    ) -> AsyncIterator[tuple[Recorder, Publisher]]:
    """A broker with that in-flight window and a source running on it; `commit_interval` is how
    long a batch may wait for its fill."""
    broker = Mosquitto(folder / "broker", inflight=inflight).start()
    conf = line(broker.port, COUNTERS)
    rec = Recorder()
    ctx = rec.context()
    ctx.commit_interval = commit_interval
    pub = Publisher(broker.port)
    try:
        async with running(MqttSource("broker", conf.config, conf.tags, ctx)):
            await until(lambda: rec.up, what="connection up")
            yield rec, pub
    finally:
        pub.close()
        broker.stop()


async def test_a_burst_is_committed_once_and_every_message_counts(tmp_path: Path) -> None:
    """A gateway publishing its machines at once (the broker's stock window of 20): one commit and
    one sync per burst, not one per message or two; nothing of the bursts is lost."""
    async with source_on(tmp_path, inflight=20) as (rec, pub):
        for k in range(5):
            before = rec.durable_calls
            await asyncio.to_thread(pub.many, burst(ACK_BATCH, 100 * k))
            await until(lambda n=ACK_BATCH * (k + 1): len(rec.readings) == n, what="the burst")
            assert rec.durable_calls - before == 1, f"burst {k} took {rec.durable_calls - before} commits"
            await asyncio.sleep(0.3)
    expected = sorted(100 * k + i for k in range(5) for i in range(ACK_BATCH))
    assert sorted(r.value for r in rec.readings) == expected


async def test_a_lone_message_waits_only_for_a_pause_in_the_flow(tmp_path: Path) -> None:
    took = []
    async with source_on(tmp_path, inflight=20, commit_interval=5.0) as (rec, pub):
        for k in range(3):
            start = time.monotonic()
            await asyncio.to_thread(pub.many, [("plant/m0", f'{{"count": {k}}}')])
            await until(lambda n=k + 1: len(rec.readings) == n, what="the message")
            took.append(time.monotonic() - start)
    # Not the 5 s the commit interval would allow: the pause after it ends the wait.
    assert max(took) < 1.0, took


async def test_a_broker_window_smaller_than_the_batch_does_not_stall_the_source(tmp_path: Path) -> None:
    """max_inflight_messages 1 (strict order): the broker holds the rest until our PUBACK, so
    waiting for a batch of ACK_BATCH would wait the whole commit interval (5 s here) each time,
    and waiting for a pause 50 ms each time; the batch follows the window instead."""
    async with source_on(tmp_path, inflight=1, commit_interval=5.0) as (rec, pub):
        start = time.monotonic()
        await asyncio.to_thread(pub.many, burst(100, 0))
        await until(lambda: len(rec.readings) == 100, within=60, what="100 messages")
        took = time.monotonic() - start
    assert took < 2.0, f"100 messages through a window of 1 took {took:.1f} s"
    assert sorted(r.value for r in rec.readings) == list(range(100))
