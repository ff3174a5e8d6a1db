"""The console's history: bounded ring buffers of run-state segments, per-minute counts and calls."""

from __future__ import annotations

from agent.runtime.console.history import KEEP_SEGMENTS, History, Minutes

T0 = 1_800_000_000.0  # a minute boundary


def test_counts_are_summed_per_minute_from_total_growth() -> None:
    h = History()
    h.seed = {"M": 1000}  # what Prodsmart held when the agent started
    h.sample(T0, [("M", 100, True, None)], {"M": 1000}, 0)  # first look: a baseline only
    h.sample(T0 + 2, [("M", 130, True, None)], {"M": 1010}, 1)
    h.sample(T0 + 59, [("M", 150, True, None)], {"M": 1050}, 3)
    h.sample(T0 + 61, [("M", 160, True, None)], {"M": 1050}, 3)
    assert h.machines["M"].minutes.rows() == [[T0, 50, 50], [T0 + 60, 10, 0]]
    assert h.calls.rows() == [[T0, 3, 0], [T0 + 60, 0, 0]]


def test_a_total_that_goes_down_counts_nothing() -> None:
    h = History()
    h.sample(T0, [("M", 100, None, None)], {}, 0)
    h.sample(T0 + 2, [("M", 40, None, None)], {}, 0)  # a new configuration's counter, say
    h.sample(T0 + 4, [("M", 45, None, None)], {}, 0)
    assert h.machines["M"].minutes.rows() == [[T0, 5, 0]]


def test_the_first_acknowledgement_counts_from_the_seed() -> None:
    h = History()
    h.seed = {"M": 500}
    h.sample(T0, [("M", 10, True, None), ("N", 0, True, None)], {"M": 520, "N": 7}, 0)
    assert h.machines["M"].minutes.rows() == [[T0, 0, 20]]
    assert h.machines["N"].minutes.rows() == [[T0, 0, 7]]  # never acknowledged before: from 0


def test_minutes_without_samples_are_zeros_and_the_ring_is_bounded() -> None:
    m = Minutes(keep=5)
    m.add(T0, 1)
    m.add(T0 + 180, 2)
    assert m.rows() == [[T0, 1, 0], [T0 + 60, 0, 0], [T0 + 120, 0, 0], [T0 + 180, 2, 0]]
    m.add(T0 + 3600 * 24, 3)
    assert len(m.rows()) == 5 and m.rows()[-1] == [T0 + 3600 * 24, 3, 0]


def test_run_states_become_segments_with_their_downtime_type() -> None:
    h = History()
    h.sample(T0, [("M", 0, None, None)], {}, 0)
    h.sample(T0 + 2, [("M", 0, True, None)], {}, 0)
    h.sample(T0 + 4, [("M", 0, True, None)], {}, 0)
    h.sample(T0 + 6, [("M", 0, False, "Maintenance")], {}, 0)
    h.sample(T0 + 8, [("M", 0, False, "Material shortage")], {}, 0)
    rows = [s.row() for s in h.machines["M"].segments]
    assert rows == [[T0, T0 + 2, "unknown", None], [T0 + 2, T0 + 6, "running", None],
                    [T0 + 6, T0 + 8, "stopped", "Maintenance"],
                    [T0 + 8, T0 + 8, "stopped", "Material shortage"]]
    assert h.machines["M"].since() == T0 + 8


def test_segments_are_bounded_in_number_and_in_age() -> None:
    h = History(keep_minutes=10)
    for i in range(KEEP_SEGMENTS * 2):
        h.sample(T0 + i, [("M", 0, i % 2 == 0, None if i % 2 == 0 else "Stop")], {}, 0)
    segments = h.machines["M"].segments
    assert len(segments) <= KEEP_SEGMENTS
    assert segments[0].end >= T0 + KEEP_SEGMENTS * 2 - 1 - 600


def test_machines_removed_by_a_reload_are_forgotten() -> None:
    h = History()
    h.sample(T0, [("M", 0, True, None), ("N", 0, True, None)], {}, 0)
    h.sample(T0 + 2, [("M", 0, True, None)], {}, 0)
    assert set(h.machines) == {"M"}


def test_the_last_hour_is_summed_per_state_and_downtime_type() -> None:
    h = History()
    for t, running, kind in [(0, True, None), (600, False, "Maintenance"), (900, True, None),
                             (3000, False, "Material shortage"), (3300, False, "Maintenance")]:
        h.sample(T0 + t, [("M", 0, running, kind)], {}, 0)
    h.sample(T0 + 4200, [("M", 0, False, "Maintenance")], {}, 0)
    # The window is [600, 4200]: the first running stretch lies before it.
    assert h.machines["M"].shares(T0 + 4200) == [
        ["running", None, 2100.0], ["stopped", "Maintenance", 1200.0],
        ["stopped", "Material shortage", 300.0]]


def test_the_last_hour_is_summed_again_only_every_few_seconds() -> None:
    h = History()
    h.sample(T0, [("M", 0, True, None)], {}, 0)
    h.sample(T0 + 4, [("M", 0, True, None)], {}, 0)
    first = h.machines["M"].shares(T0 + 4)
    h.sample(T0 + 6, [("M", 0, False, "Stop")], {}, 0)
    assert h.machines["M"].shares(T0 + 8) == first == [["running", None, 4.0]]
    h.sample(T0 + 20, [("M", 0, False, "Stop")], {}, 0)
    assert h.machines["M"].shares(T0 + 20) == [["stopped", "Stop", 14.0], ["running", None, 6.0]]
