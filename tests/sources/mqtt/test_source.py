"""The MQTT source against a real Mosquitto broker: values, deltas, retained messages, restarts, floods."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import signal
import time
from pathlib import Path

import pytest

from agent.sources.mqtt.link import MqttLink
from agent.sources.mqtt.linktypes import LinkLost, LinkSettings
from agent.sources.mqtt.source import MqttSource, default_client_id
from tests.conftest import free_port
from tests.support.fixtures_mqtt import Mosquitto, Publisher, Recorder, line, mosquitto, running, until

__all__ = ["mosquitto"]  # the fixture

VALUES = """
  PACK-03:
    connection: broker
    counter: {topic: plant/line1/pack03/count, json: data.counters.good, type: uint32}
    waste:
      Scrap: {topic: plant/line1/pack03/scrap, type: uint16}
    running: {topic: plant/line1/pack03/state, json: running}
    stop_reason: {tag: {topic: plant/line1/pack03/state, json: reason}, default: Stopped}
    parameters:
      temperature: {topic: plant/line1/pack03/temp, json: value, timestamp: ts, type: float}
  LABEL-04:
    connection: broker
    counter: {topic: plant/line1/label04/produced, json: qty, mode: delta, id: id}
    running: {topic: plant/line1/label04/running}
"""


async def publish(pub: Publisher, items: list[tuple[str, str]], retain: bool = False) -> None:
    await asyncio.to_thread(pub.many, items, 1, retain)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_totals_booleans_and_json_paths_arrive_typed(mosquitto: Mosquitto, protocol: str) -> None:
    conf = line(mosquitto.port, VALUES, f", protocol: '{protocol}'")
    rec = Recorder()
    pub = Publisher(mosquitto.port)
    async with running(conf.source(rec)):
        await until(lambda: rec.up, what="connection up")
        await publish(pub, [
            ("plant/line1/pack03/count", '{"data": {"counters": {"good": 1500}}}'),
            ("plant/line1/pack03/scrap", "12"),
            ("plant/line1/pack03/state", '{"running": false, "reason": "Material shortage"}'),
            ("plant/line1/pack03/temp", '{"value": 181.5, "ts": "2024-03-01T10:00:00Z"}'),
            ("plant/line1/label04/running", "RUN"),
            ("plant/line1/label04/running", "off"),
        ])
        await until(lambda: len(rec.readings) == 7, what="7 readings")
    pub.close()
    assert rec.values(conf.key("PACK-03")) == [1500]
    assert rec.values(conf.machines["PACK-03"].waste["Scrap"].tag) == [12]
    assert rec.values(conf.key("PACK-03", "running")) == [False]
    assert rec.values(conf.key("PACK-03", "stop_reason")) == ["Material shortage"]
    temp = [r for r in rec.readings if r.tag == conf.key("PACK-03", "temperature")]
    assert [(r.value, r.source_time) for r in temp] == [(181.5, 1709287200.0)]
    assert rec.values(conf.key("LABEL-04", "running")) == [True, False]
    assert all(r.connection == "broker" and abs(r.received_time - time.time()) < 10 for r in rec.readings)
    assert rec.durable_calls >= 1 and rec.states[0] == (True, "")


async def test_delta_ids_are_extracted_and_duplicates_passed_on(mosquitto: Mosquitto,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    conf = line(mosquitto.port, VALUES + """
  WRAP-05:
    connection: broker
    counter: {topic: plant/+/wrap05/produced, json: n, id: seq, mode: delta}
""")
    rec = Recorder()
    pub = Publisher(mosquitto.port)
    async with running(conf.source(rec)):
        await until(lambda: rec.up)
        produced = "plant/line1/label04/produced"
        await publish(pub, [
            (produced, '{"qty": 2, "id": "a"}'), (produced, '{"qty": 3, "id": "b"}'),
            (produced, '{"qty": 2, "id": "a"}'),  # the publisher sent it again: the logic drops it
            (produced, '{"qty": 4}'),  # no id: applied, but it cannot be de-duplicated
            ("plant/l1/wrap05/produced", '{"n": 1, "seq": 7}'),
            ("plant/l2/wrap05/produced", '{"n": 1, "seq": 7}'),
        ])
        await until(lambda: len(rec.readings) == 6)
    pub.close()
    label = [(r.value, r.msg_id) for r in rec.readings if r.tag == conf.key("LABEL-04")]
    assert label == [(2, "a"), (3, "b"), (2, "a"), (4, None)]
    wrap = [r.msg_id for r in rec.readings if r.tag == conf.key("WRAP-05")]
    assert wrap == ["plant/l1/wrap05/produced#7", "plant/l2/wrap05/produced#7"]  # one id space per topic
    assert rec.payload_errors() == 1
    assert "applied without de-duplication" in caplog.text


async def test_retained_totals_are_applied_and_retained_deltas_never(mosquitto: Mosquitto) -> None:
    conf = line(mosquitto.port, VALUES)
    pub = Publisher(mosquitto.port)
    count, produced = "plant/line1/pack03/count", "plant/line1/label04/produced"
    # Published before the agent ever subscribed.
    total = '{"data": {"counters": {"good": %d}}}'
    await publish(pub, [(count, total % 100), (produced, '{"qty": 5, "id": "r1"}')], retain=True)
    first = Recorder()
    async with running(conf.source(first)):
        await until(lambda: first.up and first.readings)
        # Published retained while subscribed: a live delivery, applied once.
        await publish(pub, [(produced, '{"qty": 1, "id": "r2"}'), (count, total % 101)], retain=True)
        await until(lambda: len(first.readings) == 3)
    assert first.values(conf.key("PACK-03")) == [100, 101]  # the logic compares 100 with its baseline
    assert [r.msg_id for r in first.readings if r.tag == conf.key("LABEL-04")] == ["r2"]
    again = Recorder()
    async with running(conf.source(again)):
        await until(lambda: again.up and again.readings)
        await asyncio.sleep(0.3)  # time for a wrong replay of the retained delta to show up
    pub.close()
    assert again.values(conf.key("PACK-03")) == [101]  # the replay of the retained total: no change
    assert again.values(conf.key("LABEL-04")) == []


DELTAS = """
  LABEL-04:
    connection: broker
    counter: {topic: plant/line1/label04/produced, json: qty, mode: delta}
"""


def _ids(rec: Recorder) -> collections.Counter[int]:
    return collections.Counter(int(r.value) for r in rec.readings)  # type: ignore[arg-type]


def _deltas(start: int, stop: int) -> list[tuple[str, str]]:
    # No `id`: exactly-once must come from the acknowledgement scheme alone.
    return [("plant/line1/label04/produced", json.dumps({"qty": n})) for n in range(start, stop)]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
@pytest.mark.parametrize("how", ["crash", "graceful"])
async def test_agent_restart_loses_nothing_and_applies_nothing_twice(mosquitto: Mosquitto, protocol: str,
                                                                     how: str) -> None:
    conf = line(mosquitto.port, DELTAS, f", protocol: '{protocol}'")
    pub = Publisher(mosquitto.port)
    first = Recorder(delay=0.05)  # a slow disk: many messages wait unacknowledged
    async with running(conf.source(first)):
        await until(lambda: first.up)
        sending = asyncio.create_task(publish(pub, _deltas(0, 400)))
        await until(lambda: len(first.readings) > 50)
        if how == "crash":
            first.crash()  # the commits in progress never finish: their messages stay unacknowledged
    await sending
    await publish(pub, _deltas(400, 500))  # published while the agent is down
    second = Recorder()
    async with running(conf.source(second)):
        await until(lambda: len(_ids(first) + _ids(second)) == 500, what="every message")
        await asyncio.sleep(0.2)  # time for a wrong redelivery to show up
    pub.close()
    both = _ids(first) + _ids(second)
    assert sorted(both) == list(range(500)) and set(both.values()) == {1}


MIXED = """
  LABEL-04:
    connection: broker
    counter: {topic: plant/line1/label04/produced, json: qty, mode: delta, id: id}
  PACK-03:
    connection: broker
    counter: {topic: plant/line1/pack03/count}
"""


def _mixed(start: int, stop: int) -> list[tuple[str, str]]:
    return [item for n in range(start, stop) for item in (
        ("plant/line1/label04/produced", json.dumps({"qty": n, "id": f"m{n}"})),
        ("plant/line1/pack03/count", str(n + 1)))]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_broker_restart_mid_run_loses_nothing(tmp_path: Path, protocol: str) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        conf = line(broker.port, MIXED, f", protocol: '{protocol}'")
        rec = Recorder(delay=0.02)
        async with running(conf.source(rec)):
            await until(lambda: rec.up)
            pub = Publisher(broker.port)
            await publish(pub, _mixed(0, 200))
            pub.close()
            await until(lambda: len(rec.readings) > 20)
            broker.stop()  # while messages are queued and in flight for the agent; saved on disk
            await until(lambda: not rec.up, what="connection down")
            broker.start()
            await until(lambda: rec.up, what="connection up again")
            pub = Publisher(broker.port)
            await publish(pub, _mixed(200, 300))
            pub.close()
            await until(lambda: len(set(rec.values(conf.key("LABEL-04")))) == 300, what="every delta")
            await until(lambda: rec.values(conf.key("PACK-03"))[-1:] == [300], what="the last total")
            await asyncio.sleep(0.2)
        assert rec.values(conf.key("PACK-03")) == list(range(1, 301))  # no stale total replayed
        deltas = collections.Counter(r.msg_id for r in rec.readings if r.tag == conf.key("LABEL-04"))
        # Redeliveries of deltas whose PUBACK was lost carry their id: the logic drops them.
        assert set(deltas) == {f"m{n}" for n in range(300)}
        assert next(s for s in rec.states if not s[0])[1].startswith("Lost the connection to the MQTT broker")
    finally:
        broker.stop()


async def test_a_flood_of_malformed_payloads_leaves_the_agent_responsive(
        mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    conf = line(mosquitto.port, VALUES)
    rec = Recorder()
    async with running(conf.source(rec)):  # opens the session: the broker keeps what follows
        await until(lambda: rec.up)
    garbage = [("plant/line1/pack03/count", b"not a number {"), ("plant/line1/pack03/scrap", b"\xff"),
               ("plant/line1/pack03/temp", b'{"value": "hot"}'), ("plant/line1/label04/produced", b"[]")]
    pub = Publisher(mosquitto.port)
    flood = [garbage[i % 4] for i in range(20_000)] + [("plant/line1/pack03/scrap", b"3")]
    await asyncio.to_thread(pub.many, flood)
    pub.close()
    lags: list[float] = []

    async def heartbeat() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - before - 0.01)

    # The agent comes back to a backlog of 20,000 bad messages: the hardest case for the loop.
    with caplog.at_level(logging.WARNING, logger="agent.sources.mqtt.source"):
        beat = asyncio.create_task(heartbeat())
        async with running(conf.source(rec)):
            await until(lambda: rec.values(conf.machines["PACK-03"].waste["Scrap"].tag) == [3], within=20)
        beat.cancel()
    assert rec.payload_errors() == 20_000
    warnings = [r for r in caplog.records if "cannot use a message" in r.getMessage()]
    assert len(warnings) == 4  # once per topic per minute
    assert max(lags) < 0.5, f"the event loop stalled for {max(lags):.2f}s"


async def test_wildcards_feed_the_tag_and_mixed_totals_are_reported(mosquitto: Mosquitto,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    conf = line(mosquitto.port, """
  CELL-01:
    connection: broker
    counter: {topic: plant/+/cell01/count}
    running: {topic: "plant/line1/cell01/#"}
""")
    rec = Recorder()
    pub = Publisher(mosquitto.port)
    async with running(conf.source(rec)):
        await until(lambda: rec.up)
        await publish(pub, [("plant/line1/cell01/count", "10"), ("plant/line2/cell01/count", "500")])
        await until(lambda: len(rec.readings) == 3)
    pub.close()
    assert rec.values(conf.key("CELL-01")) == [10, 500]
    assert rec.values(conf.key("CELL-01", "running")) == [10]
    assert "receives totals from plant/line1/cell01/count and plant/line2/cell01/count" in caplog.text


async def test_unreachable_broker_is_reported_then_recovered(tmp_path: Path) -> None:
    port = free_port()
    conf = line(port, DELTAS)
    rec = Recorder()
    async with running(conf.source(rec)):
        await until(lambda: rec.states, what="a state report")
        assert rec.states[0] == (False, f"Cannot reach the MQTT broker at 127.0.0.1:{port} "
                                        "(Connection refused)")
        broker = Mosquitto(tmp_path / "late", port=port).start()
        try:
            await until(lambda: rec.up, what="connection up once the broker runs")
        finally:
            broker.stop()
        await until(lambda: not rec.up, what="connection down again")
    errors = rec.metrics.registry.get_sample_value("prodsmart_edge_connection_errors_total",
                                                   {"connection": "broker"})
    assert errors is not None and errors >= 2  # each failed attempt, and the loss


async def test_credentials_come_from_the_secrets(tmp_path: Path) -> None:
    passwords = tmp_path / "passwords"
    passwords.write_text("")
    proc = await asyncio.create_subprocess_exec("mosquitto_passwd", "-b", str(passwords), "line", "s3cret")
    assert await proc.wait() == 0
    broker = Mosquitto(tmp_path / "broker", extra=f"password_file {passwords}\nallow_anonymous false",
                       anonymous=False).start()
    try:
        conf = line(broker.port, DELTAS)
        wrong = Recorder(secrets={"username": "line", "password": "guess"})
        async with running(conf.source(wrong)):
            await until(lambda: wrong.states)
        assert wrong.states[0][1].startswith(f"The MQTT broker at 127.0.0.1:{broker.port} refused the "
                                             "connection: Not authorized")
        right = Recorder(secrets={"username": "line", "password": "s3cret"})
        async with running(conf.source(right)):
            await until(lambda: right.up)
    finally:
        broker.stop()


async def test_tls_with_a_ca_file_and_a_client_certificate(tmp_path: Path) -> None:
    from tests.support.fixtures_mqtt import make_pki

    pki = make_pki(tmp_path / "pki")
    conf_tls = (f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
                "require_certificate true")
    broker = Mosquitto(tmp_path / "broker", extra=conf_tls).start()
    try:
        tls = f", tls: {{ca_file: {pki.ca}, cert_file: {pki.client_cert}, key_file: {pki.client_key}}}"
        conf = line(broker.port, VALUES, tls)
        rec = Recorder()
        async with running(conf.source(rec)):
            await until(lambda: rec.up, what="TLS connection up")
            pub = Publisher(broker.port, tls=pki)
            await publish(pub, [("plant/line1/pack03/scrap", "4")])
            pub.close()
            await until(lambda: rec.readings)
        assert rec.values(conf.machines["PACK-03"].waste["Scrap"].tag) == [4]
        untrusted = line(broker.port, VALUES, f", tls: {{ca_file: {pki.other_ca}}}")
        rec = Recorder()
        async with running(untrusted.source(rec)):
            await until(lambda: rec.states)
        assert rec.states[0][1].startswith(f"TLS with the MQTT broker at 127.0.0.1:{broker.port} failed")
    finally:
        broker.stop()


async def test_keepalive_detects_a_broker_that_stopped_answering(mosquitto: Mosquitto) -> None:
    link = MqttLink(LinkSettings("127.0.0.1", mosquitto.port, "keepalive-test", "3.1.1", keepalive=1,
                                 connect_timeout=2.0, persistent=False))
    await link.connect()
    assert mosquitto.proc is not None
    mosquitto.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(LinkLost):
            async with asyncio.timeout(5):
                await link.next_batch(10)
        assert time.monotonic() - started < 4
    finally:
        mosquitto.proc.send_signal(signal.SIGCONT)
        await link.close()


async def test_a_long_backlog_rests_the_socket_instead_of_filling_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.sources.mqtt.link.MAX_INBOX", 50)
    broker = Mosquitto(tmp_path / "broker", inflight=0).start()  # no limit on unacknowledged messages
    link = MqttLink(LinkSettings("127.0.0.1", broker.port, "backlog-test", "3.1.1", 30, 2.0))
    try:
        await link.connect()
        await link.subscribe(["t/#"])
        pub = Publisher(broker.port)
        await asyncio.to_thread(pub.many, [("t/x", str(n)) for n in range(500)])
        pub.close()
        await asyncio.sleep(0.3)
        assert 50 <= link.received < 50 + 256  # stopped reading (within one wake-up's packets)
        got: list[int] = []
        while len(got) < 500:
            batch = await link.next_batch(20)
            got += [int(m.payload) for m in batch]
            for m in batch:
                link.ack(m)
        assert got == list(range(500))
    finally:
        await link.close()
        broker.stop()


def test_default_client_id_is_fixed_and_safe() -> None:
    assert default_client_id("line broker/1") == default_client_id("line broker/1")
    assert default_client_id("line broker/1").endswith("-line-broker-1")
    assert isinstance(MqttSource, type)
