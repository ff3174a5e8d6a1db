"""Run states: a debounce under way carried over a reload and a restart; idle paused while blind."""

from __future__ import annotations

from agent.config.specs import CounterSpec, MachineSpec, RunningSpec
from agent.core.model import Quality, Reading, RunStateChanged
from agent.logic.machine import Logic

SPEC = MachineSpec("M1", "plc", counter=CounterSpec("c"), running=RunningSpec("r"), min_duration=5.0,
                   idle_after=10.0)


def _runs(events: list[object]) -> list[tuple[bool, str]]:
    return [(e.running, e.type) for e in events if isinstance(e, RunStateChanged)]


def test_a_debounce_under_way_keeps_its_time_over_a_reload_and_restarts_after_a_restart() -> None:
    logic = Logic({"M1": SPEC})
    logic.apply(Reading("plc", "r", True), 100.0)
    assert logic.tick(106.0) == []                     # running, as Prodsmart assumes
    logic.apply(Reading("plc", "r", False), 107.0)     # a stop, due at 112
    logic.dirty_states()
    reloaded = Logic({"M1": SPEC}, logic.all_states(), now=110.0)
    assert _runs(reloaded.tick(111.0)) == []
    assert _runs(reloaded.tick(112.0)) == [(False, "Stopped")]
    # After a restart the times of the old process mean nothing: the debounce starts again.
    restarted = Logic({"M1": SPEC}, logic.all_states())
    assert _runs(restarted.tick(5.0)) == []
    assert _runs(restarted.tick(9.9)) == []
    assert _runs(restarted.tick(10.0)) == [(False, "Stopped")]


def test_a_debounced_change_marks_the_state_dirty_so_it_is_committed() -> None:
    logic = Logic({"M1": SPEC})
    logic.apply(Reading("plc", "r", True), 0.0)
    logic.tick(6.0)
    logic.dirty_states()
    logic.apply(Reading("plc", "r", False), 7.0)
    assert logic.dirty_states()["M1"]["run"]["cand"] is False


def test_no_idle_while_the_connection_is_down_or_the_count_unreadable() -> None:
    logic = Logic({"M1": SPEC})
    logic.apply(Reading("plc", "c", 0), 0.0)
    logic.apply(Reading("plc", "r", True), 0.0)
    logic.tick(5.0)                                    # running from 5: idle due at 15
    logic.connection("plc", False, 8.0)
    assert _runs(logic.tick(30.0)) == []
    logic.connection("plc", True, 31.0)                # the idle clock starts again
    assert _runs(logic.tick(40.0)) == []
    logic.apply(Reading("plc", "c", None, Quality.BAD, error="timeout"), 40.5)
    assert _runs(logic.tick(60.0)) == []
    logic.apply(Reading("plc", "c", 0), 61.0)          # readable again at 61: idle at 71
    assert _runs(logic.tick(70.9)) == []
    assert _runs(logic.tick(71.0)) == [(False, "No production")]
