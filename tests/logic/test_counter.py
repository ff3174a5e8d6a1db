"""Counter roles: the bounds of a count (poison values) and signed register types."""

from __future__ import annotations

from agent.config.loader import parse_config
from agent.config.specs import CounterSpec, MachineSpec
from agent.core.model import CounterChanged, Reading
from agent.logic.machine import Logic

CONN = "plc"


def _logic(counter: CounterSpec) -> Logic:
    return Logic({"M1": MachineSpec("M1", CONN, counter=counter)})


def _counts(logic: Logic, values: list[int | float], tag: str = "c") -> list[int | None]:
    out: list[int | None] = []
    for i, value in enumerate(values):
        events = logic.apply(Reading(CONN, tag, value), float(i))
        out += [e.count for e in events if isinstance(e, CounterChanged)]
    return out


def test_an_int16_counter_wraps_through_its_sign() -> None:
    cfg = parse_config("connections: {plc: {modbus: {host: 127.0.0.1}}}\n"
                       "machines: {M1: {connection: plc, counter: {holding: 1, type: int16}}}")
    spec = cfg.machines["M1"].counter
    assert spec is not None and spec.signed and spec.modulus == 2**16
    logic = Logic(cfg.machines)
    # 32760 -> 32767 -> -32768 (32768) -> -1 (65535) -> 0 -> 10: a wrap, not a bad value.
    values = [32760, 32767, -32768, -32768, -1, 0, 0, 10, 32767, -32760, -32760]
    counts = _counts(logic, values, spec.tag)
    assert counts[-1] == 7 + 1 + 32767 + 1 + 10 + 32757 + 9  # a drop 65535 -> 0 is confirmed, then a wrap
    assert [n.kind for n in logic.drain_notices() if n.kind == "bad_value"] == []


def test_counts_beyond_the_width_or_2_to_53_are_bad_values() -> None:
    logic = _logic(CounterSpec("c", modulus=2**16))
    assert _counts(logic, [10, 65536, 20, 1e30]) == [10]
    assert [n.kind for n in logic.drain_notices()].count("bad_value") == 2
    logic = _logic(CounterSpec("c", mode="delta"))
    assert _counts(logic, [2**53, 2**53 + 1, 1e30, 2**64, 1]) == [2**53, 2**53 + 1]
    assert [n.kind for n in logic.drain_notices()].count("bad_value") == 3


def test_a_jump_beyond_2_to_53_is_refused_and_the_total_stays_storable() -> None:
    logic = _logic(CounterSpec("c", modulus=2**64))
    assert _counts(logic, [0, 5, 2**60, 2**60 + 3]) == [5, 8]
    assert "jump_rejected" in [n.kind for n in logic.drain_notices()]
