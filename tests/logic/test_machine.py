"""Machine logic: table tests for every counter, run-state and parameter rule, and hypothesis properties."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config.specs import CounterSpec, MachineSpec, ParameterSpec, RunningSpec, StopReasonSpec
from agent.core.model import (
    CounterChanged,
    Event,
    ParametersChanged,
    Quality,
    Reading,
    RunStateChanged,
    Scalar,
)
from agent.logic.machine import DEDUPE_IDS, Logic, Notice

CONN = "plc"
TYPES = StopReasonSpec("reason", {"1": "Maintenance", "2": "Material shortage", "ALARM": "Alarm"}, "Stopped")


def machine(code: str = "M1", **kw: Any) -> MachineSpec:
    return MachineSpec(code=code, connection=CONN, **kw)


def R(tag: str, value: Scalar | None, **kw: Any) -> Reading:
    return Reading(CONN, tag, value, **kw)


def logic_of(*specs: MachineSpec, states: Mapping[str, dict[str, Any]] | None = None) -> Logic:
    return Logic({m.code: m for m in specs}, states)


def feed(logic: Logic, steps: Iterable[tuple[float, str, Scalar | None]], tick: bool = True) -> list[Event]:
    """Apply (time, tag, value) steps in order, ticking after each; all events in order."""
    out: list[Event] = []
    for now, tag, value in steps:
        out += logic.apply(R(tag, value), now)
        if tick:
            out += logic.tick(now)
    return out


def counts(events: Sequence[Event]) -> list[int | None]:
    return [e.count for e in events if isinstance(e, CounterChanged)]


def runs(events: Sequence[Event]) -> list[tuple[bool, str]]:
    return [(e.running, e.type) for e in events if isinstance(e, RunStateChanged)]


def totals(emitted: Sequence[int | None]) -> list[int]:
    """The counts of counter events, which must all carry one (no waste here)."""
    assert all(c is not None for c in emitted)
    return [c for c in emitted if c is not None]


def params(events: Sequence[Event]) -> list[dict[str, Scalar]]:
    return [dict(e.values) for e in events if isinstance(e, ParametersChanged)]


def kinds(logic: Logic) -> list[str]:
    return [n.kind for n in logic.drain_notices()]


def round_trip(states: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    loaded: dict[str, dict[str, Any]] = json.loads(json.dumps(states, allow_nan=False))
    return loaded


# --------------------------------------------------------------------------- counter totals

COUNTER_CASES: list[tuple[str, dict[str, Any], list[Scalar | None], list[int | None], list[str]]] = [
    # name, CounterSpec options, raw values (one a second), emitted totals, notice kinds
    ("first reading is a baseline", {}, [100], [], []),
    ("differences count", {}, [10, 12, 12, 15], [2, 5], []),
    ("reset confirmed by the next reading", {}, [100, 110, 3, 5], [10, 15], ["reset_pending", "reset"]),
    ("reset to exactly the pending value", {}, [100, 3, 3], [3], ["reset_pending", "reset"]),
    ("glitch 0 then the old value counts nothing", {}, [100, 0, 100], [], ["reset_pending", "glitch"]),
    ("glitch 0 then production", {}, [100, 0, 104], [4], ["reset_pending", "glitch"]),
    ("glitch low value then the true value", {}, [100, 40, 101], [1], ["reset_pending", "glitch"]),
    ("second drop below the pending value", {}, [100, 50, 10, 12], [12], ["reset_pending", "reset"]),
    ("reset without confirmation", {"confirm_reset": False}, [100, 3, 5], [3, 5], ["reset"]),
    ("16-bit wrap", {"modulus": 65536}, [65530, 4, 10], [16], ["reset_pending", "wrap"]),
    ("wrap without confirmation", {"modulus": 65536, "confirm_reset": False}, [65530, 4], [10], ["wrap"]),
    ("small drop with a modulus is a reset", {"modulus": 65536}, [1000, 10, 20], [20],
     ["reset_pending", "reset"]),
    ("glitch 0 looking like a wrap", {"modulus": 65536}, [40000, 0, 40005], [5],
     ["reset_pending", "glitch"]),
    ("wrap, then a glitch before confirmation", {"modulus": 1000}, [990, 5, 0, 8], [18],
     ["reset_pending", "wrap"]),
    ("floats are floored, float noise rounds", {}, [10.0, 12.7, 13.9999999999], [2, 4], []),
    ("numeric strings", {}, ["10", "15", " 20 ", "21.0"], [5, 10, 11], []),
    ("unusable values change nothing", {},
     [10, None, math.nan, math.inf, -math.inf, -5, True, "abc", "nan", "", 12], [2], ["bad_value"] * 9),
    ("max_rate refuses an implausible jump", {"max_rate": 10.0}, [100, 105, 100_000, 100_004],
     [5, 9], ["jump_rejected"]),
    ("max_rate refuses an implausible reset", {"max_rate": 10.0}, [100, 105, 3, 50, 55],
     [5, 10], ["reset_pending", "jump_rejected"]),
]


@pytest.mark.parametrize(("options", "values", "emitted", "notices"),
                         [c[1:] for c in COUNTER_CASES], ids=[c[0] for c in COUNTER_CASES])
def test_counter_totals(options: dict[str, Any], values: list[Scalar | None], emitted: list[int],
                        notices: list[str]) -> None:
    logic = logic_of(machine(counter=CounterSpec("cnt", **options)))
    events = feed(logic, [(float(i), "cnt", v) for i, v in enumerate(values)])
    assert counts(events) == emitted
    assert kinds(logic) == notices


def test_max_rate_uses_the_time_since_the_last_good_reading() -> None:
    logic = logic_of(machine(counter=CounterSpec("cnt", max_rate=10.0)))
    # 900 in 100 s is 9/s: plausible after a long silence (a connection outage).
    assert counts(feed(logic, [(0.0, "cnt", 0), (100.0, "cnt", 900)])) == [900]
    # Unchanged readings move the reference: 50 in the last second is implausible.
    assert counts(feed(logic, [(101.0, "cnt", 900), (102.0, "cnt", 950)])) == []
    assert kinds(logic) == ["jump_rejected"]
    assert counts(feed(logic, [(103.0, "cnt", 955)])) == [905]


def test_bad_quality_and_read_errors_change_nothing() -> None:
    logic = logic_of(machine(counter=CounterSpec("cnt")))
    out = logic.apply(R("cnt", 10), 0.0)
    out += logic.apply(R("cnt", 5000, quality=Quality.BAD), 1.0)
    out += logic.apply(R("cnt", 6000, quality=Quality.UNCERTAIN), 2.0)
    out += logic.apply(R("cnt", None, quality=Quality.BAD, error="timeout"), 3.0)
    out += logic.apply(R("cnt", 12), 4.0)
    assert counts(out) == [2]
    bad = logic.drain_notices()
    assert [(n.kind, n.machine, n.role) for n in bad] == [("bad_value", "M1", "count")] * 3
    assert "timeout" in bad[2].detail


def test_counter_event_carries_count_and_only_grown_waste() -> None:
    spec = machine(counter=CounterSpec("cnt"),
                   waste={"Scrap": CounterSpec("scrap"), "Setup": CounterSpec("setup")})
    logic = logic_of(spec)
    feed(logic, [(0.0, "cnt", 0), (0.0, "scrap", 0), (0.0, "setup", 0)])
    assert logic.apply(R("scrap", 2), 1.0) == [CounterChanged("M1", None, {"Scrap": 2})]
    assert logic.apply(R("cnt", 7), 2.0) == [CounterChanged("M1", 7, {})]
    assert logic.apply(R("setup", 0), 3.0) == []


def test_one_tag_serving_count_and_waste_gives_one_event() -> None:
    logic = logic_of(machine(counter=CounterSpec("cnt"), waste={"Scrap": CounterSpec("cnt")}))
    logic.apply(R("cnt", 5), 0.0)
    assert logic.apply(R("cnt", 8), 1.0) == [CounterChanged("M1", 3, {"Scrap": 3})]


def test_one_tag_serving_two_machines() -> None:
    logic = logic_of(machine("A", counter=CounterSpec("cnt")), machine("B", counter=CounterSpec("cnt")),
                     machine("C", counter=CounterSpec("other")))
    logic.apply(R("cnt", 5), 0.0)
    assert logic.apply(R("cnt", 8), 1.0) == [CounterChanged("A", 3), CounterChanged("B", 3)]
    assert logic.apply(Reading("elsewhere", "cnt", 100), 2.0) == []  # another connection's tag


# --------------------------------------------------------------------------- delta counters


def delta_logic(states: Mapping[str, dict[str, Any]] | None = None) -> Logic:
    return logic_of(machine(counter=CounterSpec("parts", mode="delta")), states=states)


def test_delta_values_add_up_from_the_first() -> None:
    logic = delta_logic()
    steps: list[tuple[float, str, Scalar | None]] = [(0.0, "parts", 3), (1.0, "parts", 2), (2.0, "parts", 0),
                                                     (3.0, "parts", "5")]
    assert counts(feed(logic, steps)) == [3, 5, 10]
    assert counts(feed(logic, [(4.0, "parts", -1), (5.0, "parts", None)])) == []
    assert kinds(logic) == ["bad_value", "bad_value"]


def test_delta_duplicates_are_dropped_also_after_a_restart() -> None:
    logic = delta_logic()
    out = logic.apply(R("parts", 3, msg_id="a"), 0.0)
    out += logic.apply(R("parts", 2, msg_id="b"), 1.0)
    out += logic.apply(R("parts", 3, msg_id="a"), 2.0)  # QoS 1 redelivery
    assert counts(out) == [3, 5]
    assert [(n.kind, n.detail) for n in logic.drain_notices()] == [("duplicate", "a")]
    states = round_trip(logic.dirty_states())
    assert "ids" not in states["M1"]["counters"]["count"]  # the outbox keeps them in their own table
    # ... and hands them back in the states it loads, as "ids" (agent.outbox.dedupe.attach_ids).
    states["M1"]["counters"]["count"]["ids"] = [i for _, _, i in logic.drain_delta_ids()]
    restarted = delta_logic(states)
    out = restarted.apply(R("parts", 2, msg_id="b"), 3.0)
    out += restarted.apply(R("parts", 4, msg_id="c"), 4.0)
    assert counts(out) == [9]
    assert kinds(restarted) == ["duplicate"]


def test_delta_duplicates_are_dropped_after_a_reload() -> None:
    """A reload hands the old logic's full state to the new one: the delta ids go with it (they are
    no longer in the dumped state, which the outbox stores without them)."""
    logic = delta_logic()
    assert counts(logic.apply(R("parts", 3, msg_id="a"), 0.0)) == [3]
    logic.drain_delta_ids()  # committed to the outbox's table before the reload
    reloaded = delta_logic(round_trip(logic.all_states()))
    assert reloaded.apply(R("parts", 3, msg_id="a"), 1.0) == []  # the broker's redelivery
    assert kinds(reloaded) == ["duplicate"]
    assert counts(reloaded.apply(R("parts", 1, msg_id="b"), 2.0)) == [4]


def test_delta_remembers_the_last_ids_only() -> None:
    logic = delta_logic()
    for i in range(DEDUPE_IDS + 1):
        logic.apply(R("parts", 1, msg_id=f"id{i}"), float(i))
    state = logic.dirty_states()["M1"]["counters"]["count"]
    assert "ids" not in state and state["total"] == DEDUPE_IDS + 1
    assert len(logic.drain_delta_ids()) == DEDUPE_IDS + 1 and logic.drain_delta_ids() == []
    assert counts(logic.apply(R("parts", 1, msg_id="id0"), 1e6)) == [DEDUPE_IDS + 2]  # forgotten
    assert logic.apply(R("parts", 1, msg_id="id2"), 1e6) == []


# --------------------------------------------------------------------------- restart and reload


def test_restart_counts_what_was_produced_while_down_and_sends_no_run_state() -> None:
    spec = machine(counter=CounterSpec("cnt"), running=RunningSpec("run"), stop_reason=TYPES)
    logic = logic_of(spec)
    events = feed(logic, [(0.0, "cnt", 100), (0.0, "reason", 1), (0.0, "run", False), (1.0, "cnt", 100)])
    assert runs(events) == [(False, "Maintenance")]
    states = round_trip(logic.dirty_states())
    restarted = logic_of(spec, states=states)
    events = feed(restarted, [(50.0, "run", False), (50.0, "cnt", 130), (51.0, "run", False)])
    assert counts(events) == [30]
    assert runs(events) == []
    # The start after the restart closes the downtime opened before it.
    assert runs(feed(restarted, [(52.0, "run", True), (53.0, "run", True)])) == [(True, "Maintenance")]


def test_restart_sends_the_run_state_that_changed_while_down() -> None:
    spec = machine(running=RunningSpec("run"), stop_reason=TYPES)
    restarted = logic_of(spec, states={"M1": {"run": {"sent": True, "type": None, "idle": False}}})
    assert runs(feed(restarted, [(9.0, "reason", 2), (9.0, "run", False), (9.5, "run", False)])) \
        == [(False, "Material shortage")]


def test_reload_with_another_tag_keeps_the_total() -> None:
    old = machine(counter=CounterSpec("old-register"))
    logic = logic_of(old)
    assert counts(feed(logic, [(0.0, "old-register", 1000), (1.0, "old-register", 1500)])) == [500]
    states = round_trip(logic.dirty_states())
    reloaded = logic_of(replace(old, counter=CounterSpec("new-register")), states=states)
    assert kinds(reloaded) == ["rebaseline"]
    events = feed(reloaded, [(2.0, "new-register", 7), (3.0, "new-register", 9)])
    assert counts(events) == [502]


def test_roles_the_new_config_lacks_are_kept_in_the_state() -> None:
    spec = machine(counter=CounterSpec("cnt"), waste={"Old": CounterSpec("old")})
    logic = logic_of(spec)
    feed(logic, [(0.0, "cnt", 0), (0.0, "old", 0), (1.0, "old", 4)])
    reloaded = logic_of(replace(spec, waste={}), states=round_trip(logic.dirty_states()))
    feed(reloaded, [(2.0, "cnt", 1)])
    back = logic_of(spec, states=round_trip(reloaded.dirty_states()))
    assert feed(back, [(3.0, "old", 6)]) == [CounterChanged("M1", None, {"Old": 6})]


@pytest.mark.parametrize("state", [[], {"counters": []}, {"counters": {"count": {"total": "x"}}},
                                   {"counters": {"count": {"total": -3}}}, {"run": {"sent": "yes"}}])
def test_unusable_state_starts_fresh(state: Any) -> None:
    spec = machine(counter=CounterSpec("cnt"), running=RunningSpec("run"))
    logic = logic_of(spec, states={"M1": state})
    assert "state_invalid" in kinds(logic)
    assert counts(feed(logic, [(0.0, "cnt", 5), (1.0, "cnt", 6)])) == [1]


def test_dirty_states_lists_only_changed_machines() -> None:
    logic = logic_of(machine("A", counter=CounterSpec("a")), machine("B", counter=CounterSpec("b")))
    logic.apply(R("a", 5), 0.0)
    assert list(logic.dirty_states()) == ["A"]
    assert logic.dirty_states() == {}
    logic.apply(R("a", 5), 1.0)  # the same value: nothing to persist
    assert logic.dirty_states() == {}


# --------------------------------------------------------------------------- run states

BOOLEANS: list[tuple[Scalar | None, bool | None]] = [
    (True, True), (False, False), (1, True), (0, False), (1.0, True), ("true", True), ("ON", True),
    ("Run", True), (" running ", True), ("1", True), ("false", False), ("off", False), ("STOP", False),
    ("stopped", False), ("0", False), (2, None), ("maybe", None), (None, None), (math.nan, None),
]


@pytest.mark.parametrize(("value", "running"), BOOLEANS, ids=[repr(v) for v, _ in BOOLEANS])
def test_running_from_a_boolean_tag(value: Scalar | None, running: bool | None) -> None:
    logic = logic_of(machine(running=RunningSpec("run")))
    events = feed(logic, [(0.0, "run", value), (1.0, "run", value)])
    assert runs(events) == ([(False, "Stopped")] if running is False else [])
    assert kinds(logic) == (["bad_value"] * 2 if running is None else [])


LISTED: list[tuple[Scalar, bool]] = [
    (3, True), (3.0, True), ("3", True), ("auto", True), (" AUTO ", True), (7, True), (4, False),
    ("manual", False), (0, False), (True, False),
]


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize(("value", "running"), LISTED, ids=[repr(v) for v, _ in LISTED])
def test_running_values(value: Scalar, running: bool, invert: bool) -> None:
    logic = logic_of(machine(running=RunningSpec("status", (3, "Auto", "7"), invert)))
    events = feed(logic, [(0.0, "status", value), (1.0, "status", value)])
    assert runs(events) == ([] if running != invert else [(False, "Stopped")])


def test_first_observation_sends_a_stop_only() -> None:
    logic = logic_of(machine("A", running=RunningSpec("a")), machine("B", running=RunningSpec("b")))
    events = feed(logic, [(0.0, "a", True), (0.0, "b", False), (1.0, "a", True), (1.0, "b", False)])
    assert events == [RunStateChanged("B", False, "Stopped")]


def test_debounce() -> None:
    logic = logic_of(machine(running=RunningSpec("run"), min_duration=5.0))
    assert feed(logic, [(0.0, "run", True), (5.0, "run", True)]) == []
    assert feed(logic, [(10.0, "run", False)]) == []
    assert logic.tick(14.9) == []
    assert runs(logic.tick(15.0)) == [(False, "Stopped")]
    # A flip back within min_duration cancels.
    assert feed(logic, [(20.0, "run", True), (23.0, "run", False)]) == []
    assert logic.tick(40.0) == []
    assert runs(feed(logic, [(101.0, "run", True)]) + logic.tick(106.0)) == [(True, "Stopped")]


def test_a_transition_is_sent_after_its_reading_so_the_reason_of_the_same_poll_counts() -> None:
    logic = logic_of(machine(running=RunningSpec("run"), stop_reason=TYPES))
    feed(logic, [(0.0, "run", True), (0.0, "reason", 0)])
    assert logic.apply(R("run", False), 1.0) == []
    assert logic.apply(R("reason", 2), 1.0) == []
    assert runs(logic.tick(1.0)) == [(False, "Material shortage")]


def test_a_due_stop_goes_out_before_the_next_reading_counts() -> None:
    logic = logic_of(machine(counter=CounterSpec("cnt"), running=RunningSpec("run")))
    feed(logic, [(0.0, "cnt", 0), (0.0, "run", True)])
    assert logic.apply(R("run", False), 1.0) == []
    assert logic.apply(R("cnt", 3), 1.05) == [RunStateChanged("M1", False, "Stopped"),
                                              CounterChanged("M1", 3)]


REASONS: list[tuple[Scalar | None, str]] = [
    (1, "Maintenance"), (1.0, "Maintenance"), ("1", "Maintenance"), (2, "Material shortage"),
    ("ALARM", "Alarm"), (7, "Stopped"), ("alarm", "Stopped"), (None, "Stopped"),
]


@pytest.mark.parametrize(("reason", "kind"), REASONS, ids=[repr(r) for r, _ in REASONS])
def test_stop_reason_mapping(reason: Scalar | None, kind: str) -> None:
    logic = logic_of(machine(running=RunningSpec("run"), stop_reason=TYPES))
    steps: list[tuple[float, str, Scalar | None]] = [(0.0, "run", True)]
    if reason is not None:
        steps.append((1.0, "reason", reason))
    steps += [(1.0, "run", False), (2.0, "run", False)]
    assert runs(feed(logic, steps)) == [(False, kind)]


def test_reason_changing_while_stopped_sends_nothing_and_the_start_closes_the_stop() -> None:
    logic = logic_of(machine(running=RunningSpec("run"), stop_reason=TYPES))
    events = feed(logic, [(0.0, "run", True), (1.0, "reason", 1), (1.0, "run", False), (2.0, "reason", 2),
                          (3.0, "reason", "ALARM"), (4.0, "run", True), (5.0, "reason", 0),
                          (6.0, "run", True)])
    assert runs(events) == [(False, "Maintenance"), (True, "Maintenance")]


def test_bad_reason_keeps_the_last_good_one() -> None:
    logic = logic_of(machine(running=RunningSpec("run"), stop_reason=TYPES))
    logic.apply(R("reason", 1), 0.0)
    logic.apply(R("reason", 2, quality=Quality.BAD), 0.5)
    assert runs(feed(logic, [(1.0, "run", False), (2.0, "run", False)])) == [(False, "Maintenance")]
    assert kinds(logic) == ["bad_value"]


# --------------------------------------------------------------------------- idle detection


def idle_machine(**kw: Any) -> MachineSpec:
    return machine(counter=CounterSpec("cnt"), idle_after=10.0, idle_type="No production", **kw)


def test_idle_stops_and_the_next_count_starts() -> None:
    logic = logic_of(idle_machine(running=RunningSpec("run")))
    assert feed(logic, [(0.0, "run", True), (0.0, "cnt", 0), (1.0, "cnt", 1), (2.0, "cnt", 2)]) \
        == [CounterChanged("M1", 1), CounterChanged("M1", 2)]
    assert logic.tick(11.9) == []
    assert logic.tick(12.0) == [RunStateChanged("M1", False, "No production")]
    assert logic.tick(30.0) == []
    assert logic.apply(R("cnt", 2), 31.0) == []
    assert logic.apply(R("cnt", 5), 32.0) == [RunStateChanged("M1", True, "No production"),
                                              CounterChanged("M1", 5)]
    assert logic.tick(41.9) == []
    assert runs(logic.tick(42.0)) == [(False, "No production")]


def test_a_real_stop_while_idle_sends_no_second_stop() -> None:
    logic = logic_of(idle_machine(running=RunningSpec("run"), stop_reason=TYPES))
    feed(logic, [(0.0, "run", True), (0.0, "cnt", 0)])
    assert runs(logic.tick(10.0)) == [(False, "No production")]
    events = feed(logic, [(11.0, "reason", 1), (11.0, "run", False), (12.0, "run", False), (50.0, "cnt", 3)])
    assert runs(events) == []
    assert counts(events) == [3]  # counts while stopped still count, without a start
    events = feed(logic, [(60.0, "run", True), (61.0, "run", True)])
    assert runs(events) == [(True, "No production")]
    assert runs(logic.tick(69.9)) == []
    assert runs(logic.tick(70.0)) == [(False, "No production")]  # the idle clock starts with the start


def test_idle_without_a_running_tag_and_across_a_restart() -> None:
    spec = idle_machine()
    logic = logic_of(spec)
    feed(logic, [(0.0, "cnt", 0), (5.0, "cnt", 1)])
    assert runs(logic.tick(15.0)) == [(False, "No production")]
    restarted = logic_of(spec, states=round_trip(logic.dirty_states()))
    assert restarted.tick(16.0) == [] and restarted.tick(100.0) == []
    assert runs(feed(restarted, [(101.0, "cnt", 1), (102.0, "cnt", 2)])) == [(True, "No production")]


def test_tick_is_cheap_and_the_deadline_heap_stays_small() -> None:
    logic = logic_of(idle_machine(running=RunningSpec("run")))
    feed(logic, [(0.0, "run", True)])
    for i in range(5000):
        logic.apply(R("cnt", i), i * 0.01)
        assert logic.tick(i * 0.01) == []
    assert len(logic._heap) <= 2


# --------------------------------------------------------------------------- parameters


def param_logic(**options: Any) -> Logic:
    return logic_of(machine(parameters={"temp": ParameterSpec("t", **options)}))


PARAM_CASES: list[tuple[str, dict[str, Any], list[Scalar | None], list[Scalar]]] = [
    ("first value always, then changes", {}, [180.0, 180.0, 180.1, 180.1], [180.0, 180.1]),
    ("deadband against the last sent value", {"deadband": 0.5},
     [180.0, 180.3, 180.5, 180.2, 180.9, 181.0], [180.0, 180.5, 181.0]),
    ("scale and offset", {"scale": 0.1, "offset": 2.0}, [1000, 1803], [102.0, 182.3]),
    ("integer scale keeps integers", {"scale": 2.0}, [21, 2**62], [42, 2**63]),
    ("strings pass through", {"deadband": 5.0}, ["A", "A", "B", 3, "3"], ["A", "B", 3, "3"]),
    ("booleans pass through", {"scale": 10.0}, [True, True, False], [True, False]),
    ("unusable values are ignored", {}, [1.5, math.nan, None, math.inf, 1.5, 2.5], [1.5, 2.5]),
]


@pytest.mark.parametrize(("options", "values", "sent"), [c[1:] for c in PARAM_CASES],
                         ids=[c[0] for c in PARAM_CASES])
def test_parameters(options: dict[str, Any], values: list[Scalar | None], sent: list[Scalar]) -> None:
    logic = param_logic(**options)
    events = feed(logic, [(float(i), "t", v) for i, v in enumerate(values)])
    assert [p["temp"] for p in params(events)] == sent


def test_min_interval_holds_the_newest_value_until_the_interval_ends() -> None:
    logic = param_logic(min_interval=10.0, deadband=0.5)
    assert params(feed(logic, [(0.0, "t", 180.0), (1.0, "t", 181.0), (2.0, "t", 182.0)])) == [{"temp": 180.0}]
    assert logic.tick(9.9) == []
    assert logic.tick(10.0) == [ParametersChanged("M1", {"temp": 182.0})]
    assert params(feed(logic, [(11.0, "t", 190.0)])) == []
    assert params(feed(logic, [(12.0, "t", 182.2)])) == []  # back within the deadband: cancelled
    assert logic.tick(30.0) == []
    assert params(feed(logic, [(31.0, "t", 170.0)])) == [{"temp": 170.0}]  # interval over: at once


def test_max_interval_heartbeat_resends_the_newest_value() -> None:
    logic = param_logic(max_interval=30.0, deadband=1.0)
    feed(logic, [(0.0, "t", 180.0), (5.0, "t", 180.4)])
    assert logic.tick(29.9) == []
    assert logic.tick(30.0) == [ParametersChanged("M1", {"temp": 180.4})]
    assert logic.tick(59.0) == []
    assert params(logic.tick(60.0)) == [{"temp": 180.4}]
    assert params(feed(logic, [(70.0, "t", 185.0)])) == [{"temp": 185.0}]
    assert logic.tick(90.0) == [] and params(logic.tick(100.0)) == [{"temp": 185.0}]


def test_parameters_due_together_are_bundled() -> None:
    spec = machine(parameters={"temp": ParameterSpec("t", min_interval=10.0),
                               "speed": ParameterSpec("s", min_interval=10.0)})
    logic = logic_of(spec)
    assert params(feed(logic, [(0.0, "t", 1.0), (0.0, "s", 2.0)])) == [{"temp": 1.0}, {"speed": 2.0}]
    feed(logic, [(3.0, "t", 5.0), (4.0, "s", 6.0)])
    assert logic.tick(10.0) == [ParametersChanged("M1", {"temp": 5.0, "speed": 6.0})]


def test_parameter_bad_value_notice() -> None:
    logic = param_logic()
    logic.apply(R("t", math.nan), 0.0)
    assert logic.drain_notices() == [Notice("bad_value", "M1", "param:temp", "not a finite number: nan")]


# --------------------------------------------------------------------------- properties


@st.composite
def production(draw: st.DrawFn) -> tuple[int | None, list[int], int]:
    """(modulus, raw readings, true production after the first reading).

    Production between two readings stays below half the modulus, every drop (a reset, a
    wrap, or a single glitch read of 0 or a low value) is followed by an ordinary reading
    before the next drop, and the reading after a reset is still below the value before
    it: otherwise no algorithm can tell them apart.
    """
    modulus = draw(st.sampled_from([None, 100, 256, 65536]))
    span = modulus or 10**18  # where the register wraps
    limit = modulus // 2 - 1 if modulus else 10**6
    raw = draw(st.integers(0, (modulus or 10**9) - 1))
    readings, true = [raw], 0
    ceiling: int | None = None  # the next reading must be an ordinary one below this
    for _ in range(draw(st.integers(0, 30))):
        op = "prod" if ceiling is not None else draw(st.sampled_from(["prod", "prod", "reset", "glitch"]))
        if op == "reset" and raw > 0:
            low = draw(st.integers(max(0, raw - span // 2), raw - 1))  # a bigger drop reads as a wrap
            readings.append(low)
            true, raw, ceiling = true + low, low, raw
        elif op == "glitch" and raw > 0:
            readings.append(draw(st.integers(0, raw - 1)))
            ceiling = span
        else:
            room = limit if ceiling is None else min(limit, ceiling - 1 - raw)
            k = draw(st.integers(0, room))
            true, ceiling = true + k, None
            raw += k
            if raw >= span:  # a wrap: itself a drop
                raw -= span
                ceiling = span
            readings.append(raw)
    if ceiling is not None:
        readings.append(raw)
    return modulus, readings, true


def run_counter(modulus: int | None, readings: Sequence[int], split: int | None = None) -> list[int | None]:
    spec = machine(counter=CounterSpec("cnt", modulus=modulus))
    logic = logic_of(spec)
    states: dict[str, dict[str, Any]] = {}
    events: list[Event] = []
    for i, raw in enumerate(readings):
        if i == split:
            states.update(logic.dirty_states())
            logic = logic_of(spec, states=round_trip(states))
        events += logic.apply(R("cnt", raw), float(i))
        events += logic.tick(float(i))
        states.update(logic.dirty_states())
    return counts(events)


@settings(max_examples=200, deadline=None)
@given(production())
def test_property_totals_strictly_increase_to_the_true_production(
        case: tuple[int | None, list[int], int]) -> None:
    modulus, readings, true = case
    emitted = totals(run_counter(modulus, readings))
    assert emitted == sorted(set(emitted))  # strictly increasing
    assert (emitted[-1] if emitted else 0) == true


@settings(max_examples=200, deadline=None)
@given(production(), st.data())
def test_property_state_round_trip_changes_nothing(case: tuple[int | None, list[int], int],
                                                   data: st.DataObject) -> None:
    modulus, readings, _ = case
    split = data.draw(st.integers(0, len(readings)))
    assert run_counter(modulus, readings, split) == run_counter(modulus, readings)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 50)), max_size=40), st.data())
def test_property_delta_duplicates_never_count_twice(messages: list[tuple[int, int]],
                                                     data: st.DataObject) -> None:
    """Messages (id, value), each id always with the same value, redelivered at random."""
    values = {msg_id: value for msg_id, value in messages}
    split = data.draw(st.integers(0, len(messages)))
    logic = delta_logic()
    states: dict[str, dict[str, Any]] = {}
    ids: list[str] = []  # what the outbox stores, and attaches to the states it loads
    emitted: list[int] = []
    for i, (msg_id, _) in enumerate(messages):
        if i == split:
            loaded = round_trip(states)
            if loaded:
                loaded["M1"]["counters"]["count"]["ids"] = ids
            logic = delta_logic(loaded)
        emitted += totals(counts(logic.apply(R("parts", values[msg_id], msg_id=str(msg_id)), float(i))))
        states.update(logic.dirty_states())
        ids += [x for _, _, x in logic.drain_delta_ids()]
    assert emitted == sorted(set(emitted))
    assert (emitted[-1] if emitted else 0) == sum(values.values())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 3.0), st.booleans()), max_size=40), st.sampled_from([0.0, 1.0, 2.5]))
def test_property_run_states_alternate_and_end_in_the_held_state(steps: list[tuple[float, bool]],
                                                                 min_duration: float) -> None:
    logic = logic_of(machine(running=RunningSpec("run"), min_duration=min_duration))
    now, events = 0.0, []
    for dt, running in steps:
        now += dt
        events += logic.apply(R("run", running), now) + logic.tick(now)
    events += logic.tick(now + min_duration + 1.0)
    sent = [running for running, _ in runs(events)]
    assert all(a != b for a, b in zip([True, *sent], sent, strict=False))  # starts as running
    if steps:
        assert ([True, *sent][-1]) == steps[-1][1]


def test_a_start_read_with_a_count_goes_out_before_that_count() -> None:
    logic = logic_of(machine(counter=CounterSpec("count"), running=RunningSpec("run"), stop_reason=TYPES))
    events = feed(logic, [(0.0, "run", True), (0.0, "count", 5), (1.0, "run", False), (1.0, "count", 5),
                          (2.0, "count", 5)])
    # The poll that sees the machine run again also sees its first part.
    events += feed(logic, [(3.0, "run", True), (3.0, "count", 6)], tick=False)
    kinds_ = [type(e).__name__ for e in events]
    assert kinds_ == ["RunStateChanged", "RunStateChanged", "CounterChanged"]
    assert runs(events) == [(False, "Stopped"), (True, "Stopped")]
    assert counts(events) == [1]


def test_old_totals_redelivered_after_a_crash_are_not_a_reset() -> None:
    logic = logic_of(machine(counter=CounterSpec("count")))
    feed(logic, [(0.0, "count", 90), (1.0, "count", 100)])
    # The broker redelivers messages committed just before the crash: 95, 98, 100 (DUP).
    events: list[Event] = []
    for now, value in [(2.0, 95), (2.1, 98), (2.2, 100)]:
        events += logic.apply(R("count", value, redelivered=True), now)
    events += feed(logic, [(3.0, "count", 104)])
    assert counts(events) == [14]
    assert "stale_redelivery" in kinds(logic)
    # A real reset still counts, even if its first message came as a redelivery.
    events = logic.apply(R("count", 2, redelivered=True), 4.0)
    events += feed(logic, [(5.0, "count", 5), (6.0, "count", 7)])
    assert counts(events) == [21]  # the drop to 5 is confirmed by 7: 14 + 7
