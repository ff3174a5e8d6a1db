"""The Modbus source against a real Modbus server in another process (tests/support/modbus_server.py)."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable

import pytest

from agent.core.metrics import Metrics
from agent.core.model import Quality
from agent.sources.modbus.config import ModbusConnection
from agent.sources.modbus.link import Link
from agent.sources.modbus.planner import Limits, point_of
from agent.sources.modbus.poller import BAD_TAG_RETRY, PointResult, Poller
from agent.sources.modbus.source import ModbusSource, Schedule
from tests.support.fixtures_modbus import (
    ModbusServer,
    Recorder,
    binding,
    modbus_server,
    running,
    tcp,
    wait_for,
)

__all__ = ["modbus_server"]  # the fixture, imported for pytest

Start = Callable[..., ModbusServer]

COUNTER = binding(holding=100, type="uint32", word_order="little")
SCRAP = binding(holding=102, type="uint16")
RUNNING = binding(coil=12)
REASON = binding(address=40111)
TEMP = binding(input=30, type="float32")
FLAG = binding(holding=110, bit=3)
DOOR = binding(discrete=5)
ENERGY = binding(input=40, type="float64", order="DCBA")
BIG = binding(holding=120, type="int64", order="BADC")


async def test_counters_flags_and_floats_are_read(modbus_server: Start) -> None:
    server = modbus_server()
    server.set_value(1, "holding", 100, 123456, "uint32", "CDAB")
    server.set(1, "holding", 102, [7])
    server.set(1, "coil", 12, [True])
    server.set_value(1, "input", 30, 215.5, "float32")
    server.set(1, "holding", 110, [0b1000])
    server.set(1, "discrete", 5, [True])
    server.set_value(1, "input", 40, -1234.5678, "float64", "DCBA")
    server.set_value(1, "holding", 120, -(2**40), "int64", "BADC")
    rec = Recorder()
    tags = [COUNTER, SCRAP, RUNNING, REASON, TEMP, FLAG, DOOR, ENERGY, BIG]
    source = ModbusSource("press", tcp(server, poll=0.05), tags, rec.ctx())
    async with running(source):
        await wait_for(lambda: all(rec.good(t.key) for t in tags), what="a good reading of every tag")
        assert rec.states == [("up", "press")]
        server.set_value(1, "holding", 100, 123500, "uint32", "CDAB")
        server.set(1, "coil", 12, [False])
        await wait_for(lambda: rec.good(COUNTER.key)[-1] == 123500 and rec.good(RUNNING.key)[-1] is False)
    assert rec.good(COUNTER.key)[0] == 123456
    assert rec.good(SCRAP.key)[0] == 7
    assert rec.good(RUNNING.key)[0] is True
    assert rec.good(REASON.key)[0] == 8  # 40111 is holding 110, the register FLAG takes bit 3 of
    assert rec.good(TEMP.key)[0] == 215.5
    assert rec.good(FLAG.key)[0] is True
    assert rec.good(DOOR.key)[0] is True
    assert rec.good(ENERGY.key)[0] == -1234.5678
    assert rec.good(BIG.key)[0] == -(2**40)
    assert not [r for r in rec.readings if r.quality is not Quality.GOOD]
    rec.assert_one_reading_per_tag(tags)


async def test_a_server_restart_is_survived(modbus_server: Start) -> None:
    server = modbus_server()
    server.set(1, "holding", 102, [10])
    rec = Recorder()
    metrics = Metrics()
    config = tcp(server, poll=0.05, timeout=0.3, retry_max=1.0)
    source = ModbusSource("press", config, [SCRAP], rec.ctx(metrics))
    async with running(source):
        await wait_for(lambda: rec.good(SCRAP.key) == [10] * len(rec.good(SCRAP.key)) != [])
        server.stop()
        await wait_for(lambda: ("down" in [s for s, _ in rec.states]), what="the connection reported down")
        await wait_for(lambda: rec.bad(SCRAP.key), what="the tag marked bad")
        server.set(1, "holding", 102, [11])  # recorded now, applied when the server is back
        server.start()
        await wait_for(lambda: 11 in rec.good(SCRAP.key), within=10, what="reading again after the restart")
    assert [s for s, _ in rec.states] == ["up", "down", "up"]
    assert rec.states[1][1].startswith("Cannot reach the PLC at 127.0.0.1:")
    assert set(rec.good(SCRAP.key)) == {10, 11}
    assert metrics.connection_errors.labels("press")._value.get() >= 1


async def test_a_refused_connection_reconnects_with_backoff(modbus_server: Start) -> None:
    server = modbus_server()
    server.stop()
    rec = Recorder()
    source = ModbusSource("press", tcp(server, poll=0.05, timeout=0.3, retry_max=0.4), [SCRAP], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.states, what="a state report")
        assert rec.states[0][0] == "down" and "connection refused" in rec.states[0][1]
        assert source.backoff.attempts >= 1
        server.start()
        await wait_for(lambda: rec.good(SCRAP.key), within=5, what="a reading once the PLC is up")
    assert [s for s, _ in rec.states] == ["down", "up"]


async def test_an_illegal_address_leaves_the_other_tags_working(modbus_server: Start) -> None:
    server = modbus_server({"units": {"1": {"holes": {"holding": [[200, 204]]}}}})
    server.set(1, "holding", 195, [1, 2, 3, 4, 5])
    server.set(1, "holding", 205, [6, 7])
    good = [binding(holding=o) for o in (195, 197, 199, 205, 206)]
    hole = binding(holding=202)
    past_end = binding(holding=5000, type="uint32")
    rec = Recorder()
    source = ModbusSource("press", tcp(server, poll=0.05), [*good, hole, past_end], rec.ctx())
    async with running(source):
        await wait_for(lambda: len(rec.batches) >= 5)
        before = server.requests()
        await wait_for(lambda: len(rec.batches) >= 15)
        after = server.requests()
        cycles = len(rec.batches)
    assert [rec.good(t.key)[-1] for t in good] == [1, 3, 5, 6, 7]
    assert not rec.good(hole.key) and not rec.good(past_end.key)
    assert "illegal data address" in (rec.bad(hole.key)[-1].error or "")
    assert "illegal data address" in (rec.bad(past_end.key)[-1].error or "")
    assert rec.states == [("up", "press")]
    # Once refined: 195..199 and 205..206 (the gap 200..204 no longer read through).
    assert (after - before) / (cycles - 5) <= 2.2


async def test_one_dead_unit_behind_a_gateway_does_not_delay_the_others(modbus_server: Start) -> None:
    server = modbus_server({"units": {"1": {}, "2": {}}})
    server.set(1, "holding", 0, [11])
    server.set(2, "holding", 0, [22])
    one, two, dead = binding(holding=0), binding(holding=0, unit=2), binding(holding=0, unit=3)
    rec = Recorder()
    poll, seconds = 0.1, 3.0
    source = ModbusSource("gateway", tcp(server, poll=poll, timeout=0.4), [one, two, dead], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.batches)
        started = time.monotonic()
        await wait_for(lambda: time.monotonic() - started > seconds, within=seconds + 1)
    times = [t for t, batch in rec.batches if t >= started]
    intervals = [b - a for a, b in itertools.pairwise(times)]
    # Waiting for unit 3 in each cycle would make every interval >= its 0.4 s timeout.
    assert len(times) >= 0.7 * seconds / poll
    assert statistics.median(intervals) < 0.12
    assert sorted(intervals)[int(0.9 * len(intervals))] < 0.25
    assert set(rec.good(one.key)) == {11} and set(rec.good(two.key)) == {22}
    assert not rec.good(dead.key)
    assert "unit 3 does not answer" in (rec.bad(dead.key)[-1].error or "")
    assert rec.states == [("up", "gateway")]
    rec.assert_one_reading_per_tag([one, two, dead])


async def test_a_late_answer_does_not_poison_later_reads(modbus_server: Start) -> None:
    server = modbus_server({"units": {"1": {}, "2": {}}})
    server.set(1, "holding", 0, [1, 1])
    server.set(2, "holding", 0, [2, 2])
    one, two = binding(holding=0, type="uint32"), binding(holding=0, type="uint32", unit=2)
    rec = Recorder()
    source = ModbusSource("gateway", tcp(server, poll=0.05, timeout=0.2), [one, two], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.good(one.key) and rec.good(two.key))
        server.delay(1, 0.35)  # answers after the client gave up: arrives during other requests
        await wait_for(lambda: rec.bad(one.key), what="unit 1 timing out")
        server.delay(1, 0)
        server.set(1, "holding", 0, [3, 3])
        await wait_for(lambda: 0x00030003 in rec.good(one.key), within=10, what="unit 1 back")
        await wait_for(lambda: len(rec.good(two.key)) > len(rec.good(one.key)) / 2 + 10)
    assert set(rec.good(one.key)) <= {0x00010001, 0x00030003}
    assert set(rec.good(two.key)) == {0x00020002}
    rec.assert_one_reading_per_tag([one, two])


@pytest.mark.parametrize("mode", ["tid", "short"])
async def test_a_mismatched_answer_resynchronises_the_connection(modbus_server: Start, mode: str) -> None:
    server = modbus_server()
    server.set(1, "holding", 0, [5, 6])
    tag = binding(holding=0, type="uint32")
    rec = Recorder()
    source = ModbusSource("press", tcp(server, poll=0.05, timeout=0.3, retry_max=0.5), [tag], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.good(tag.key))
        server.garble(1, mode)
        server.set(1, "holding", 0, [7, 8])
        await wait_for(lambda: 0x00070008 in rec.good(tag.key), within=10, what="reads after the resync")
        count = len(rec.good(tag.key))
        await wait_for(lambda: len(rec.good(tag.key)) >= count + 5)
    assert set(rec.good(tag.key)) <= {0x00050006, 0x00070008}
    assert rec.good(tag.key)[-5:] == [0x00070008] * 5


async def test_poll_overruns_are_counted(modbus_server: Start) -> None:
    server = modbus_server()
    rec = Recorder()
    metrics = Metrics()
    source = ModbusSource("slow", tcp(server, poll=0.05, timeout=1.0), [SCRAP], rec.ctx(metrics))
    async with running(source):
        await wait_for(lambda: rec.good(SCRAP.key))
        server.delay(1, 0.08)
        await wait_for(lambda: source.overruns >= 3, what="overruns")
    assert metrics.poll_overruns.labels("slow")._value.get() == source.overruns


async def test_steady_schedule_without_drift(modbus_server: Start) -> None:
    server = modbus_server()
    rec = Recorder()
    poll, cycles = 0.08, 30
    source = ModbusSource("press", tcp(server, poll=poll), [SCRAP, TEMP], rec.ctx())
    async with running(source):
        await wait_for(lambda: len(rec.batches) > cycles, within=10)
    times = [t for t, _ in rec.batches[: cycles + 1]]
    # Each batch is late by its cycle's read time (jitter), but the lateness does not add up.
    late = [t - (times[0] + i * poll) for i, t in enumerate(times)]
    assert abs(statistics.median(late[-10:]) - statistics.median(late[:10])) < 0.015
    assert source.overruns == 0


def test_schedule_skips_missed_ticks() -> None:
    schedule = Schedule(1.0, 100.0)
    assert schedule.advance(100.2) == pytest.approx(0.8)
    assert schedule.advance(101.0) == pytest.approx(1.0)  # on time: no drift
    assert schedule.advance(104.5) == pytest.approx(0.5)  # 3.5 s late: ticks 103, 104 skipped
    assert (schedule.next_at, schedule.overruns) == (105.0, 1)


async def test_workarounds_one_request_per_tag_and_pauses(modbus_server: Start) -> None:
    server = modbus_server()
    server.set(1, "holding", 0, [1, 2, 3])
    server.set(1, "coil", 0, [True, False, True])
    tags = [binding(holding=0), binding(holding=1), binding(holding=2), binding(coil=2)]
    config = tcp(server, request_per_tag=True, request_delay=0.05, connect_delay=0.1)
    link = Link(config, "old-plc")
    started = time.monotonic()
    await link.open()
    try:
        assert time.monotonic() - started >= 0.1
        poller = Poller(link, [point_of(t, 1) for t in tags], Limits.of(config), "old-plc")
        before, started = server.requests(), time.monotonic()
        results = await poller.cycle()
        elapsed = time.monotonic() - started
    finally:
        link.close()
    assert server.requests() - before == poller.stats.requests == 4
    assert elapsed >= 3 * 0.05
    assert [r.value for r in results] == [True, 1, 2, 3]


async def test_workarounds_register_limit_and_coils_from_zero(modbus_server: Start) -> None:
    server = modbus_server({"units": {"1": {"bits": 64}}})
    server.set(1, "holding", 0, list(range(100)))
    server.set(1, "coil", 40, [True])
    tags = [binding(holding=o, type="uint32") for o in range(0, 100, 2)] + [binding(coil=40)]
    config = tcp(server, max_registers=20, coils_from_zero=True)
    link = Link(config, "plc")
    await link.open()
    try:
        poller = Poller(link, [point_of(t, 1) for t in tags], Limits.of(config), "plc")
        results = await poller.cycle()
    finally:
        link.close()
    assert poller.stats.requests == 5 + 1
    assert [(b.start, b.count) for b in poller.blocks if b.table == "coil"] == [(0, 41)]
    assert results[0].value is True
    assert [r.value for r in results[1:]] == [(o << 16) + o + 1 for o in range(0, 100, 2)]


async def test_a_refused_tag_is_tried_again_and_comes_back(modbus_server: Start) -> None:
    server = modbus_server({"units": {"1": {"holes": {"holding": [[300, 300]]}}}})
    server.set(1, "holding", 298, [1, 2, 3, 4])
    tags = [binding(holding=o) for o in (298, 299, 300, 301)]
    now = [0.0]
    config = tcp(server)
    link = Link(config, "plc")
    await link.open()
    try:
        poller = Poller(link, [point_of(t, 1) for t in tags], Limits.of(config), "plc", clock=lambda: now[0])
        first = await poller.cycle()
        second = await poller.cycle()
        steady = poller.stats.requests
        server.holes(1, {})  # a new PLC program has register 300
        now[0] += BAD_TAG_RETRY - 1
        early = await poller.cycle()
        now[0] += 2
        back = await poller.cycle()
    finally:
        link.close()

    def values(results: list[PointResult]) -> list[object]:
        return [r.value for r in sorted(results, key=lambda r: r.point.offset)]

    assert values(first) == values(second) == values(early) == [1, 2, None, 4]
    assert "illegal data address" in (next(r.error for r in first if r.point.offset == 300) or "")
    assert steady == 2  # 298..299 and 301, no more tries of 300 until it is due
    assert values(back) == [1, 2, 3, 4]


async def test_a_dead_unit_is_probed_with_backoff_and_comes_back(modbus_server: Start) -> None:
    server = modbus_server({"units": {"1": {}, "2": {}}})
    server.set(2, "holding", 0, [5])
    one, two = binding(holding=0), binding(holding=0, unit=2)
    rec = Recorder()
    source = ModbusSource("gateway", tcp(server, poll=0.05, timeout=0.2), [one, two], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.good(two.key))
        server.kill_unit(2)
        await wait_for(lambda: rec.bad(two.key), what="unit 2 marked bad")
        requests, cycles = server.requests(), len(rec.good(one.key))
        await asyncio.sleep(1.0)
        # ~20 cycles while dead: unit 1 read in each, unit 2 probed at most twice (backoff 0.5-1s, 1-2s)
        assert server.requests() - requests <= len(rec.good(one.key)) - cycles + 3
        server.kill_unit(2, dead=False)
        server.set(2, "holding", 0, [6])
        await wait_for(lambda: 6 in rec.good(two.key), within=5, what="unit 2 back")
    assert rec.states == [("up", "gateway")]


async def test_a_unit_dying_between_two_requests_gives_one_reading_per_tag(modbus_server: Start) -> None:
    server = modbus_server({"units": {"1": {}, "2": {}}})
    server.set(1, "holding", 0, [1])
    server.set(1, "input", 0, [2])
    tags = [binding(holding=0), binding(input=0), binding(holding=0, unit=2)]
    rec = Recorder()
    source = ModbusSource("gateway", tcp(server, poll=0.05, timeout=0.15), tags, rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.good(tags[1].key))
        server.delay(1, 0.3, table="input")  # holding answered, then input times out
        await wait_for(lambda: rec.bad(tags[1].key), what="the input register marked bad")
        server.delay(1, 0, table="input")
        await wait_for(lambda: rec.last(tags[1].key).quality is Quality.GOOD,  # type: ignore[union-attr]
                       within=5, what="unit 1 back")
    rec.assert_one_reading_per_tag(tags)
    assert rec.bad(tags[0].key)  # unit 1 skipped while dead, holding register too
    assert set(rec.good(tags[0].key)) == {1} and set(rec.good(tags[1].key)) == {2}


async def test_modbus_rtu_over_a_serial_line(modbus_server: Start) -> None:
    server = modbus_server({"units": {"1": {}, "7": {}}}, pty=True)
    server.set_value(7, "holding", 100, 123456, "uint32", "CDAB")
    server.set(7, "coil", 3, [True])
    server.set(1, "input", 0, [42])
    counter, flag, other = binding(holding=100, type="uint32", order="CDAB"), binding(coil=3), \
        binding(input=0, unit=1)
    config = ModbusConnection.model_validate({"serial": server.device, "baudrate": 115200, "unit": 7,
                                              "poll": 0.05, "timeout": 0.5})
    rec = Recorder()
    source = ModbusSource("line", config, [counter, flag, other], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.good(counter.key) and rec.good(flag.key) and rec.good(other.key))
        server.set_value(7, "holding", 100, 123457, "uint32", "CDAB")
        await wait_for(lambda: 123457 in rec.good(counter.key))
    assert rec.good(counter.key)[0] == 123456 and rec.good(flag.key)[0] is True
    assert set(rec.good(other.key)) == {42}
    assert rec.states == [("up", "line")]


async def test_a_dead_connection_does_not_slow_another(modbus_server: Start) -> None:
    server = modbus_server()
    gone = modbus_server()
    gone.stop()  # refused; and a black hole would only cost its own task the connect timeout
    rec_ok, rec_dead = Recorder(), Recorder()
    ok = ModbusSource("ok", tcp(server, poll=0.05), [SCRAP], rec_ok.ctx())
    dead = ModbusSource("dead", tcp(gone, poll=0.05, timeout=0.2, retry_max=0.2), [SCRAP], rec_dead.ctx())
    async with running(ok), running(dead):
        await asyncio.sleep(1.0)
    assert len(rec_ok.batches) >= 14 and set(rec_ok.good(SCRAP.key)) == {0}
    assert [s for s, _ in rec_dead.states] == ["down"] and dead.backoff.attempts >= 3


@pytest.mark.parametrize(("code", "bad_cycles"), [(6, 1), (4, 1), (11, 3), (1, 3)])
async def test_exception_answers(modbus_server: Start, code: int, bad_cycles: int) -> None:
    """Busy or failing: bad one cycle. Gateway without answer: unit waits. No such function: quarantine."""
    server = modbus_server({"units": {"1": {}, "2": {}}})
    server.set(1, "holding", 0, [9])
    tags = [binding(holding=0), binding(holding=0, unit=2)]
    config = tcp(server)
    link = Link(config, "plc")
    await link.open()
    try:
        poller = Poller(link, [point_of(t, 1) for t in tags], Limits.of(config), "plc")
        server.fail(1, code)
        cycles = [await poller.cycle() for _ in range(3)]
    finally:
        link.close()
    unit1 = [next(r for r in c if r.point.unit == 1) for c in cycles]
    assert [r.error is not None for r in unit1] == [True] * bad_cycles + [False] * (3 - bad_cycles)
    assert f"exception {code}" in (unit1[0].error or "")
    assert all(next(r for r in c if r.point.unit == 2).error is None for c in cycles)
