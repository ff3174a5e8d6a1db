"""The SQLite outbox: lanes, coalescing, parameters, offsets, dead letters, crash safety, storage errors."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config.specs import CounterSpec, MachineSpec
from agent.core.metrics import Metrics
from agent.core.model import CounterChanged, ParametersChanged, Reading, RunStateChanged
from agent.logic.counter import DEDUPE_IDS
from agent.logic.machine import Logic
from agent.outbox.dedupe import MAX_ID_AGE
from agent.outbox.schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE
from agent.outbox.store import Call, Outbox, StorageError


def bodies(calls: list[Call]) -> list[tuple[str, str, dict[str, object]]]:
    return [(c.machine, c.kind, dict(c.body)) for c in calls]


async def send_head(box: Outbox, machine: str) -> Call:
    """Take the machine's head call as the uplink would (marks it attempted and in flight)."""
    head = next(h for h in await box.heads() if h.machine == machine)
    call = await box.begin_attempt(head)
    assert call is not None
    return call


async def deliver(box: Outbox, machine: str) -> Call:
    call = await send_head(box, machine)
    await box.ack(call, 100.0)
    return call


# ---------------------------------------------------------------- lanes and coalescing


async def test_calls_of_a_machine_keep_event_order(box: Outbox) -> None:
    await box.commit({}, [
        CounterChanged("A", 5),
        RunStateChanged("A", False, "Maintenance"),
        RunStateChanged("B", False, "Stopped"),
        CounterChanged("A", 7),
        RunStateChanged("A", True, "Maintenance"),
    ], now=1.0)
    assert bodies(await box.queued()) == [
        ("A", "counter", {"count": 5}),
        ("A", "startstop", {"type": "Maintenance", "running": 0}),
        ("A", "counter", {"count": 7}),
        ("A", "startstop", {"type": "Maintenance", "running": 1}),
        ("B", "startstop", {"type": "Stopped", "running": 0}),
    ]
    assert [(h.machine, h.kind) for h in await box.heads()] == [("A", "counter"), ("B", "startstop")]


async def test_counter_events_coalesce_into_the_newest_call(box: Outbox) -> None:
    for i in range(1, 101):
        waste = {"Scrap": i // 10} if i % 10 == 0 else {}
        if i == 50:
            waste["Burr"] = 3
        await box.commit({}, [CounterChanged("A", i, waste)], now=float(i))
    await box.commit({}, [CounterChanged("A", None, {"Burr": 4})], now=101.0)
    assert bodies(await box.queued()) == [
        ("A", "counter", {"count": 100, "waste": [{"code": "Burr", "quantity": 4},
                                                  {"code": "Scrap", "quantity": 10}]}),
    ]
    (call,) = await box.queued()
    assert call.created == 1.0  # its age is the age of the oldest count it carries


async def test_coalescing_never_crosses_a_startstop(box: Outbox) -> None:
    await box.commit({}, [CounterChanged("A", 1), CounterChanged("A", 2)], now=1.0)
    await box.commit({}, [RunStateChanged("A", False, "Stopped"), CounterChanged("A", 3)], now=2.0)
    await box.commit({}, [CounterChanged("A", 4), RunStateChanged("A", True, "Stopped")], now=3.0)
    await box.commit({}, [CounterChanged("A", 5)], now=4.0)
    assert [c.body.get("count", c.body.get("running")) for c in await box.queued()] == [2, 0, 4, 1, 5]


async def test_an_attempted_call_is_frozen(box: Outbox) -> None:
    await box.commit({}, [CounterChanged("A", 10, {"Scrap": 1})], now=1.0)
    sent = await send_head(box, "A")
    await box.commit({}, [CounterChanged("A", 12, {"Scrap": 2})], now=2.0)
    await box.attempt_failed(sent, unknown=True)
    calls = await box.queued("A")
    assert bodies(calls) == [
        ("A", "counter", {"count": 10, "waste": [{"code": "Scrap", "quantity": 1}]}),
        ("A", "counter", {"count": 12, "waste": [{"code": "Scrap", "quantity": 2}]}),
    ]
    again = await send_head(box, "A")
    assert again.id == sent.id and again.body == sent.body
    assert again.unknown and again.attempts == 2


async def test_many_machines_in_one_commit(box: Outbox) -> None:
    events = [CounterChanged(f"M{m:03}", n) for n in range(1, 11) for m in range(100)]
    states = {f"M{m:03}": {"total": 10} for m in range(100)}
    await box.commit(states, events, now=1.0)
    calls = await box.queued()
    assert len(calls) == 100 and all(c.body == {"count": 10} for c in calls)
    assert (await box.load_states())["M042"] == {"total": 10}


# ---------------------------------------------------------------- parameters


async def test_parameters_keep_the_newest_value_and_ride_on_the_counter_call(box: Outbox) -> None:
    await box.commit({}, [ParametersChanged("A", {"temp": 20.5, "mode": "auto"})], now=1.0)
    await box.commit({}, [ParametersChanged("A", {"temp": 21.0, "on": True})], now=2.0)
    assert await box.pending_parameters("A") == {"temp": 21.0, "mode": "auto", "on": 1}
    await box.commit({}, [CounterChanged("A", 7)], now=3.0)
    assert [h.kind for h in await box.heads()] == ["counter"]  # not a parameters call: the lane is busy
    call = await send_head(box, "A")
    assert call.body == {"count": 7, "parameters": [
        {"name": "mode", "value": "auto"}, {"name": "on", "value": 1}, {"name": "temp", "value": 21.0}]}
    # A newer value that arrives while the call is in flight must survive its acknowledgement.
    await box.commit({}, [ParametersChanged("A", {"temp": 22.0})], now=4.0)
    await box.ack(call, 5.0)
    assert await box.pending_parameters("A") == {"temp": 22.0}


async def test_parameters_alone_go_to_the_parameters_endpoint(box: Outbox) -> None:
    await box.commit({}, [ParametersChanged("A", {"temp": 20}), ParametersChanged("A", {"temp": 21}),
                          RunStateChanged("B", False, "Stopped")], now=1.0)
    heads = await box.heads()
    assert [(h.machine, h.kind) for h in heads] == [("B", "startstop"), ("A", "parameters")]
    call = await send_head(box, "A")
    assert call.kind == "parameters" and call.body == {"parameters": [{"code": "temp", "value": 21}]}
    await box.ack(call, 2.0)
    assert await box.pending_parameters("A") == {}
    assert [h.machine for h in await box.heads()] == ["B"]


async def test_unusable_parameter_values_are_left_out(box: Outbox) -> None:
    await box.commit({}, [ParametersChanged("A", {"nan": float("nan"), "ok": 1.5})], now=1.0)
    assert await box.pending_parameters("A") == {"ok": 1.5}


# ---------------------------------------------------------------- offsets, acked values, rebase


async def test_the_offset_is_added_to_the_count_only(box: Outbox) -> None:
    assert await box.rebase("A", 1000) == 1000  # no total yet: the next count is 1000 + total
    await box.commit({}, [CounterChanged("A", 5, {"Scrap": 2})], now=1.0)
    assert bodies(await box.queued()) == [
        ("A", "counter", {"count": 1005, "waste": [{"code": "Scrap", "quantity": 2}]})]


async def test_nothing_at_or_below_what_prodsmart_holds_is_sent(box: Outbox) -> None:
    await box.commit({}, [CounterChanged("A", 10, {"Scrap": 3, "Burr": 1})], now=1.0)
    await deliver(box, "A")
    stats = (await box.stats(2.0))[0]
    assert (stats.acked_count, dict(stats.acked_waste)) == (10, {"Scrap": 3, "Burr": 1})
    await box.commit({}, [CounterChanged("A", 10, {"Scrap": 4, "Burr": 1})], now=3.0)
    assert bodies(await box.queued()) == [("A", "counter", {"waste": [{"code": "Scrap", "quantity": 4}]})]
    await box.commit({}, [CounterChanged("A", 9, {"Burr": 1})], now=4.0)  # nothing greater: nothing new
    assert len(await box.queued()) == 1


async def test_rebase_makes_the_next_count_greater_than_prodsmarts(box: Outbox) -> None:
    await box.commit({}, [CounterChanged("A", 40)], now=1.0)
    await deliver(box, "A")
    await box.commit({}, [CounterChanged("A", 50, {"Scrap": 1})], now=2.0)  # queued, not attempted
    offset = await box.rebase("A", 5000)
    # Prodsmart acknowledged a total of 40: the 10 parts counted since are not in its 5000 yet, so
    # they go out above it (issue 10 item 10: the offset was taken from the last counted total,
    # 50, which dropped the queued call and lost those 10 parts).
    assert offset == 5000 - 40
    assert bodies(await box.queued()) == [
        ("A", "counter", {"count": 5010, "waste": [{"code": "Scrap", "quantity": 1}]})]
    await box.commit({}, [CounterChanged("A", 51)], now=3.0)
    assert (await box.queued())[0].body["count"] == 5011
    stats = (await box.stats(4.0))[0]
    assert (stats.offset, stats.acked_count) == (offset, 5000)


async def test_rebase_keeps_parts_counted_before_the_first_acknowledgement(box: Outbox) -> None:
    await box.commit({}, [CounterChanged("A", 30)], now=1.0)  # never sent: Prodsmart has none of it
    assert await box.rebase("A", 700) == 700
    assert bodies(await box.queued()) == [("A", "counter", {"count": 730})]


async def test_rebase_of_a_waste_code(box: Outbox) -> None:
    await box.commit({}, [CounterChanged("A", 10, {"Scrap": 4, "Burr": 2})], now=1.0)
    await deliver(box, "A")
    await box.commit({}, [CounterChanged("A", 12, {"Scrap": 6})], now=2.0)  # 2 scrap queued
    await box.rebase("A", 1000, {"Scrap": 300})
    assert bodies(await box.queued()) == [
        ("A", "counter", {"count": 1002, "waste": [{"code": "Scrap", "quantity": 302}]})]
    await box.commit({}, [CounterChanged("A", 13, {"Scrap": 7, "Burr": 3})], now=3.0)
    assert bodies(await box.queued()) == [("A", "counter", {
        "count": 1003, "waste": [{"code": "Burr", "quantity": 3}, {"code": "Scrap", "quantity": 303}]})]
    stats = (await box.stats(4.0))[0]
    assert dict(stats.acked_waste) == {"Scrap": 300, "Burr": 2}
    # A lost logic state resumes from the logic's own totals, never from Prodsmart's rebased ones
    # (Scrap acknowledged as 300 is the logic's 4 plus the offset of 296).
    assert (await box.known_totals())["A"] == {"count": 13, "waste:Scrap": 4, "waste:Burr": 2}


async def test_a_rebase_racing_a_call_in_flight(box: Outbox) -> None:
    """The call in flight carries the old offset; Prodsmart refuses it as not increasing. That is
    not a disagreement to dead-letter: its parts go out with the next call, above the new count."""
    await box.commit({}, [CounterChanged("A", 40)], now=1.0)
    await deliver(box, "A")
    await box.commit({}, [CounterChanged("A", 50)], now=2.0)
    flying = await send_head(box, "A")
    await box.rebase("A", 5000)
    assert await box.outcome_unknown(flying)
    await box.ack(flying, 3.0)  # what the uplink does with "not increasing" after an unknown outcome
    await box.commit({}, [CounterChanged("A", 55)], now=4.0)
    assert bodies(await box.queued()) == [("A", "counter", {"count": 5015})]


async def test_rebase_thaws_an_attempted_call(box: Outbox) -> None:
    await box.commit({}, [CounterChanged("A", 40)], now=1.0)
    await deliver(box, "A")
    await box.commit({}, [CounterChanged("A", 50)], now=2.0)
    failed = await send_head(box, "A")
    await box.attempt_failed(failed, unknown=True)  # frozen with the old offset
    await box.rebase("A", 5000)
    again = await send_head(box, "A")
    assert dict(again.body) == {"count": 5010} and not again.unknown


async def test_rebase_never_goes_below_an_acknowledged_count(box: Outbox) -> None:
    await box.commit({}, [CounterChanged("A", 300)], now=1.0)
    await deliver(box, "A")
    assert await box.rebase("A", 100) == 0  # Prodsmart holds 300: the offset stays so counts go above
    await box.commit({}, [CounterChanged("A", 301)], now=2.0)
    assert (await box.queued())[0].body == {"count": 301}


async def test_waste_without_count_is_sent_by_default(box: Outbox) -> None:
    await box.commit({}, [CounterChanged("A", None, {"Scrap": 2})], now=1.0)
    assert bodies(await box.queued()) == [("A", "counter", {"waste": [{"code": "Scrap", "quantity": 2}]})]


async def test_waste_without_count_can_be_held_until_a_count(tmp_path: Path) -> None:
    box = await Outbox.open(str(tmp_path / "a.db"), waste_without_count="hold")
    try:
        await box.commit({}, [CounterChanged("A", None, {"Scrap": 2})], now=1.0)
        await box.commit({}, [RunStateChanged("A", False, "Stopped")], now=2.0)
        await box.commit({}, [CounterChanged("A", None, {"Scrap": 3, "Burr": 1})], now=3.0)
        assert bodies(await box.queued()) == [("A", "startstop", {"type": "Stopped", "running": 0})]
        await box.commit({}, [CounterChanged("A", 8, {"Burr": 2})], now=4.0)
        # This one merges: the queued call has a count.
        await box.commit({}, [CounterChanged("A", None, {"Scrap": 4})], now=5.0)
        assert bodies(await box.queued())[1] == ("A", "counter", {
            "count": 8, "waste": [{"code": "Burr", "quantity": 2}, {"code": "Scrap", "quantity": 4}]})
    finally:
        await box.close()


# ---------------------------------------------------------------- dead letters


async def test_dead_letters_can_be_listed_retried_and_dropped(box: Outbox) -> None:
    await box.commit({}, [CounterChanged("A", 10, {"Scrap": 1}), RunStateChanged("A", False, "Bogus"),
                          CounterChanged("A", 20, {"Scrap": 2})], now=1.0)
    first = await send_head(box, "A")
    dead_id = await box.dead_letter(first, 400, "x" * 5000, now=2.0)
    stop = await send_head(box, "A")
    stop_id = await box.dead_letter(stop, 400, "downtime type 'Bogus' is not assigned", now=3.0)
    await deliver(box, "A")  # count 20, Scrap 2
    letters = await box.dead_letters()
    assert [(d.id, d.kind, d.status) for d in letters] == [
        (dead_id, "counter", 400), (stop_id, "startstop", 400)]
    assert len(letters[0].response) == 2048 and letters[0].body["count"] == 10
    assert (await box.stats(4.0))[0].dead_letters == 2
    await box.commit({}, [CounterChanged("A", 21, {"Scrap": 3})], now=5.0)
    assert await box.retry_dead_letter(dead_id)
    # Requeued at the lane's tail, without what Prodsmart already holds (count 10 <= 20, Scrap 1 <= 2).
    assert await box.retry_dead_letter(stop_id)
    assert bodies(await box.queued()) == [
        ("A", "counter", {"count": 21, "waste": [{"code": "Scrap", "quantity": 3}]}),
        ("A", "startstop", {"type": "Bogus", "running": 0}),
    ]
    assert await box.dead_letters() == []
    assert not await box.retry_dead_letter(dead_id)
    again = await send_head(box, "A")
    await box.ack(again, 6.0)
    letter = await box.dead_letter(await send_head(box, "A"), 400, "no", now=7.0)
    assert await box.drop_dead_letter(letter) and not await box.drop_dead_letter(letter)
    assert await box.queued() == [] and await box.dead_letters() == []


async def test_a_retried_counter_keeps_what_is_still_greater(box: Outbox) -> None:
    await box.commit({}, [CounterChanged("A", 10, {"Scrap": 5})], now=1.0)
    letter = await box.dead_letter(await send_head(box, "A"), 422, "?", now=2.0)
    await box.commit({}, [CounterChanged("A", 12, {"Burr": 1})], now=3.0)
    await deliver(box, "A")
    assert await box.retry_dead_letter(letter)
    assert bodies(await box.queued()) == [("A", "counter", {"waste": [{"code": "Scrap", "quantity": 5}]})]


async def test_a_refused_parameters_call_stops_repeating(box: Outbox) -> None:
    await box.commit({}, [ParametersChanged("A", {"bad": 1, "ok": 2})], now=1.0)
    letter = await box.dead_letter(await send_head(box, "A"), 400, "unknown parameter bad", now=2.0)
    assert await box.pending_parameters("A") == {} and await box.heads() == []
    await box.commit({}, [ParametersChanged("A", {"ok": 3})], now=3.0)
    assert await box.retry_dead_letter(letter)
    assert await box.pending_parameters("A") == {"bad": 1, "ok": 3}  # the newer value wins


# ---------------------------------------------------------------- crash safety and atomicity


async def test_a_reopened_database_has_the_same_states_and_queue(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.db")
    box = await Outbox.open(path)
    await box.commit({"A": {"raw_last": 17, "total": 40}}, [
        CounterChanged("A", 40), RunStateChanged("A", False, "Stopped"),
        ParametersChanged("A", {"temp": 3})], now=1.0)
    in_flight = await send_head(box, "A")  # the process dies while this call is being sent
    before = await box.queued()
    await box.close()
    again = await Outbox.open(path)
    try:
        assert await again.load_states() == {"A": {"raw_last": 17, "total": 40}}
        after = await again.queued()
        assert bodies(after) == bodies(before)
        retry = await send_head(again, "A")
        assert retry.id == in_flight.id and retry.body == in_flight.body
        assert retry.unknown  # it may have reached Prodsmart before the crash
    finally:
        await again.close()


async def test_a_commit_is_all_or_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.db")
    box = await Outbox.open(path)
    try:
        await box.commit({"A": {"v": 1}}, [CounterChanged("A", 1)], now=1.0)
        with sqlite3.connect(path) as raw:  # a real failure half-way through the transaction
            raw.execute("CREATE TRIGGER boom BEFORE INSERT ON calls WHEN NEW.machine = 'BOOM' "
                        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
        raw.close()
        with pytest.raises(StorageError, match="Cannot write the database"):
            await box.commit({"A": {"v": 2}, "BOOM": {"v": 2}},
                             [CounterChanged("A", 2), CounterChanged("BOOM", 1)], now=2.0)
        assert await box.load_states() == {"A": {"v": 1}}
        assert bodies(await box.queued()) == [("A", "counter", {"count": 1})]
        await box.commit({"A": {"v": 3}}, [CounterChanged("A", 3)], now=3.0)  # still usable
        assert bodies(await box.queued()) == [("A", "counter", {"count": 3})]
    finally:
        await box.close()


async def test_a_full_disk_is_a_storage_error_not_a_loss(tmp_path: Path) -> None:
    metrics = Metrics()
    box = await Outbox.open(str(tmp_path / "agent.db"), metrics=metrics)
    try:
        await box.commit({"A": {"v": 1}}, [CounterChanged("A", 1)], now=1.0)
        db = box._db
        assert db is not None
        pages = next(iter(await db.execute_fetchall("PRAGMA page_count")))[0]
        await db.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: as a full disk
        with pytest.raises(StorageError, match="disk is full"):
            await box.commit({"A": {"v": 2, "big": "x" * 100_000}}, [CounterChanged("A", 2)], now=2.0)
        assert await box.load_states() == {"A": {"v": 1}}
        assert metrics.db_errors._value.get() == 1
    finally:
        await box.close()


# ---------------------------------------------------------------- storage errors at start-up


async def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"the directory .*nowhere does not exist"):
        await Outbox.open(str(tmp_path / "nowhere" / "agent.db"))


async def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StorageError, match=r"Cannot open the database at .*: it is not a database .*corrupt"):
        await Outbox.open(str(path))


async def test_a_damaged_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    box = await Outbox.open(str(path))
    await box.commit({f"M{i}": {"x": "y" * 500} for i in range(200)}, [], now=1.0)
    await box.close()
    data = bytearray(path.read_bytes())
    data[4096 * 3: 4096 * 3 + 200] = b"\xff" * 200  # scribble over a b-tree page
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=r"Cannot open the database at .*(damaged|corrupt)"):
        await Outbox.open(str(path))


def _open_without_root_rights(path: Path) -> str:
    """Open the outbox in another process that permission bits apply to, even when tests run as root."""
    script = ("import asyncio, sys\nfrom agent.outbox.store import Outbox, StorageError\n"
              "async def main():\n    try:\n        b = await Outbox.open(sys.argv[1])\n"
              "        await b.close()\n        print('opened')\n"
              "    except StorageError as e:\n        print(e)\nasyncio.run(main())\n")
    command = [sys.executable, "-c", script, str(path)]
    if os.geteuid() == 0:  # root ignores permission bits unless it gives up these capabilities
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=root)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_a_read_only_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    await (await Outbox.open(str(path))).close()
    path.chmod(0o444)
    try:
        assert _open_without_root_rights(path) == f"Cannot open the database at {path}: it is read-only"
    finally:
        path.chmod(0o644)


async def test_a_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    try:
        message = _open_without_root_rights(folder / "agent.db")
    finally:
        folder.chmod(0o755)
    assert message == (f"Cannot open the database at {folder}/agent.db: the directory {folder} is read-only "
                       "(SQLite creates its journal files next to the database)")


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.db")
    await (await Outbox.open(path)).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE schema_version SET version = 99")
    raw.close()
    with pytest.raises(StorageError, match="a newer prodsmart-edge wrote it"):
        await Outbox.open(path)


# ---------------------------------------------------------------- size bound and stats


async def test_past_the_size_bound_the_oldest_parameters_go_first(tmp_path: Path) -> None:
    box = await Outbox.open(str(tmp_path / "agent.db"), max_size_mb=0.25)
    try:
        await box.commit({}, [CounterChanged(f"M{m}", 1) for m in range(50)], now=0.0)
        for i in range(60):  # ~6 kB of parameter values a commit, 360 kB in all
            await box.commit({}, [ParametersChanged("P", {f"p{i}-{k}": "v" * 1000 for k in range(6)})],
                             now=float(i + 1))
        pending = await box.pending_parameters("P")
        assert 0 < len(pending) < 360
        kept = sorted({int(code[1:].split("-")[0]) for code in pending})
        assert kept == list(range(kept[0], 60)) and kept[0] > 0  # the oldest went, the newest stay
        assert len(await box.queued()) == 50  # calls are never dropped
    finally:
        await box.close()


async def test_stats_cover_queues_history_and_dead_letters(box: Outbox) -> None:
    await box.commit({"C": {}}, [CounterChanged("A", 5), RunStateChanged("B", False, "Stopped"),
                                 ParametersChanged("D", {"t": 1})], now=10.0)
    await box.commit({}, [CounterChanged("A", 6), RunStateChanged("A", False, "Stopped")], now=20.0)
    await deliver(box, "B")
    stats = {s.machine: s for s in await box.stats(now=25.0)}
    assert sorted(stats) == ["A", "B", "C", "D"]
    assert (stats["A"].depth, stats["A"].oldest_pending_age) == (2, 15.0)
    assert (stats["B"].depth, stats["B"].acked_running, stats["B"].oldest_pending_age) == (0, False, None)
    assert stats["C"].depth == 0 and stats["D"].pending_parameters == 1
    assert await box.machine_codes() == ["A", "B", "C", "D"]


async def test_a_call_that_never_left_thaws_and_merges_with_the_one_behind(box: Outbox) -> None:
    await box.commit({}, [CounterChanged("M1", 10, {"Scrap": 1})], 1.0)
    call = await send_head(box, "M1")
    # While it is in flight, more parts: a new call behind it (the one in flight is frozen).
    await box.commit({}, [CounterChanged("M1", 20, {})], 2.0)
    assert len(await box.queued("M1")) == 2
    await box.attempt_failed(call, unknown=False)  # connection refused: it never reached Prodsmart
    await box.commit({}, [CounterChanged("M1", 30, {})], 3.0)
    queued = await box.queued("M1")
    assert len(queued) == 1
    sent = await send_head(box, "M1")
    assert dict(sent.body) == {"count": 30, "waste": [{"code": "Scrap", "quantity": 1}]}


async def test_a_call_with_an_unknown_outcome_stays_frozen(box: Outbox) -> None:
    await box.commit({}, [CounterChanged("M1", 10, {})], 1.0)
    call = await send_head(box, "M1")
    await box.attempt_failed(call, unknown=True)  # a timeout: it may have been applied
    await box.commit({}, [CounterChanged("M1", 20, {})], 2.0)
    assert len(await box.queued("M1")) == 2
    again = await send_head(box, "M1")
    assert dict(again.body) == {"count": 10} and again.unknown


async def test_a_command_beside_the_agent_leaves_its_calls_in_flight(box: Outbox) -> None:
    """Issue 10 item 7: `status` (reader) and `rebase`/`dead-letters retry` (operator) open the
    database while the agent has a call in flight; the call must still thaw and merge after a
    failure that never reached Prodsmart."""
    await box.commit({}, [CounterChanged("M1", 10, {})], 1.0)
    call = await send_head(box, "M1")
    await box.commit({}, [CounterChanged("M1", 20, {})], 2.0)
    reader = await Outbox.open(box.path, access="reader")
    assert [s.depth for s in await reader.stats(3.0)] == [2]
    with pytest.raises(StorageError, match="read-only"):
        await reader.drop_dead_letter(1)  # a reader cannot write, whatever it calls
    await reader.close()
    operator = await Outbox.open(box.path, access="operator")
    await operator.close()
    await box.attempt_failed(call, unknown=False)
    (merged,) = await box.queued("M1")
    assert dict(merged.body) == {"count": 20}


async def test_a_reader_needs_an_existing_current_database(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist yet"):
        await Outbox.open(str(tmp_path / "none.db"), access="reader")
    assert not os.listdir(tmp_path)
    with sqlite3.connect(tmp_path / "other.db") as con:
        con.execute("CREATE TABLE t (x)")
    with pytest.raises(StorageError, match="no prodsmart-edge schema"):
        await Outbox.open(str(tmp_path / "other.db"), access="reader")


# ---------------------------------------------------------------- delta de-duplication ids (issue 10 item 14)


def _delta_logic(states: dict[str, dict[str, object]] | None = None) -> Logic:
    spec = MachineSpec("M1", "broker", counter=CounterSpec("parts", mode="delta"))
    return Logic({"M1": spec}, states)


async def test_delta_ids_live_in_their_own_table_bounded_by_count_and_age(box: Outbox) -> None:
    logic = _delta_logic()
    for i in range(DEDUPE_IDS + 50):
        logic.apply(Reading("broker", "parts", 1, msg_id=f"m{i}"), float(i))
        if i % 1000 == 999 or i == DEDUPE_IDS + 49:
            await box.commit(logic.dirty_states(), [], 1000.0, logic.drain_delta_ids())
    async with box._read() as db:
        (size,), = await db.execute_fetchall("SELECT length(data) FROM state")
        (stored, oldest), = await db.execute_fetchall(
            "SELECT COUNT(*), (SELECT id FROM delta_ids ORDER BY n LIMIT 1) FROM delta_ids")
    assert size < 500, "the ids are rewritten with the state on every commit"
    assert (stored, oldest) == (DEDUPE_IDS, "m50")
    restarted = _delta_logic(await box.load_states())
    assert restarted.apply(Reading("broker", "parts", 1, msg_id=f"m{DEDUPE_IDS + 49}"), 1e5) == []
    assert restarted.apply(Reading("broker", "parts", 1, msg_id="m0"), 1e5) != []  # beyond the bound
    await box.commit(restarted.dirty_states(), [], 1000.0 + MAX_ID_AGE + 1, restarted.drain_delta_ids())
    assert _delta_logic(await box.load_states()).apply(
        Reading("broker", "parts", 1, msg_id="m60"), 1e5) != []  # older than the age bound: forgotten


async def test_a_version_1_database_moves_its_delta_ids_out_of_the_state(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as con:
        for sql in (*MIGRATIONS[1], VERSION_TABLE, "INSERT INTO schema_version VALUES (1)"):
            con.execute(sql)
        state = {"v": 1, "counters": {"count": {"key": "parts", "total": 7, "raw": None, "pending": None,
                                                "t": 5.0, "ids": ["a", "b"]}}}
        con.execute("INSERT INTO state VALUES ('M1', ?)", (json.dumps(state),))
    box = await Outbox.open(str(path))
    try:
        logic = _delta_logic(await box.load_states())
        assert logic.apply(Reading("broker", "parts", 1, msg_id="b"), 9.0) == []
        assert logic.apply(Reading("broker", "parts", 1, msg_id="c"), 9.0) == [CounterChanged("M1", 8, {})]
    finally:
        await box.close()
    again = await Outbox.open(str(path))  # migrating is done once; opening again changes nothing
    try:
        async with again._read() as db:
            assert await db.execute_fetchall("SELECT id FROM delta_ids ORDER BY n") == [("a",), ("b",)]
            assert await db.execute_fetchall("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    finally:
        await again.close()


# ---------------------------------------------------------------- durable commits (issue 10 item 13)

_SYNC_SCRIPT = """
import asyncio, os, sys
from agent.core.model import CounterChanged
from agent.outbox.store import Outbox

async def main():
    box = await Outbox.open(sys.argv[1])
    try:
        await box.commit({}, [CounterChanged("A", 1)], 1.0)  # settle the first-commit set-up
        os.getppid()
        await box.commit({}, [CounterChanged("A", 2)], 2.0)
        os.getppid()
        await box.commit({}, [CounterChanged("A", 3)], 3.0, sync=True)
        os.getppid()
    finally:
        await box.close()

asyncio.run(main())
"""


def test_the_commit_that_releases_a_durable_emitter_is_synced(tmp_path: Path) -> None:
    """With synchronous=NORMAL a WAL commit is not synced: after a power cut it may be gone
    although the MQTT PUBACK went out. A commit made for a durable emitter is synced (seen as
    an fsync/fdatasync of the database's files between the markers, traced with strace)."""
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync,getppid", "-o", str(trace),
                    sys.executable, "-c", _SYNC_SCRIPT, str(tmp_path / "agent.db")],
                   check=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    calls = [line for line in trace.read_text().splitlines() if "(" in line and "resumed" not in line]
    names = [line.split(None, 1)[1].split("(")[0] for line in calls]
    marks = [i for i, name in enumerate(names) if name == "getppid"]
    assert len(marks) == 3, names
    plain = names[marks[0] + 1:marks[1]]
    durable = names[marks[1] + 1:marks[2]]
    assert plain == [], f"a plain commit is not synced with synchronous=NORMAL: {plain}"
    assert any(n in ("fsync", "fdatasync") for n in durable), durable
