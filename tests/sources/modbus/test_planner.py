"""The block planner: minimal requests for a realistic tag map, limits, splitting refused blocks."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sources.modbus.config import Table
from agent.sources.modbus.decode import Codec
from agent.sources.modbus.planner import Block, Limits, Point, plan, split


def pt(table: Table, offset: int, type_name: str = "uint16", unit: int = 1, bit: int | None = None) -> Point:
    kind = "bool" if table in ("coil", "discrete") else type_name
    return Point(f"{unit}:{table}:{offset}:{type_name}:{bit}", unit, table, offset, Codec(kind, "ABCD", bit))


def realistic_map() -> list[Point]:
    """200 tags of two units, laid out the way PLC programmers tend to."""
    points = [pt("holding", 1000 + 2 * i, "uint32") for i in range(60)]           # counters, packed
    points += [pt("holding", 2000 + 5 * i) for i in range(40)]                     # stop reasons, stride 5
    points += [pt("input", 2 * i, "float32") for i in range(40)]                   # process values
    points += [pt("coil", 3 * i) for i in range(30)]                               # run flags
    points += [pt("discrete", 100 + 50 * i, unit=2) for i in range(20)]            # sparse inputs
    points += [pt("holding", 500, "bool", unit=2, bit=b) for b in range(10)]       # status word bits
    random.Random(7).shuffle(points)
    return points


def covers_every_point_once(blocks: list[Block], points: list[Point], limits: Limits) -> None:
    seen = [p.key for b in blocks for p in b.points]
    assert sorted(seen) == sorted(p.key for p in points)
    for b in blocks:
        assert b.count <= limits.size(b.table)
        assert all(b.start <= p.offset and p.end <= b.start + b.count for p in b.points)
        assert {(p.unit, p.table) for p in b.points} == {(b.unit, b.table)}


def test_the_example_counts() -> None:
    assert len(realistic_map()) == 200


@pytest.mark.parametrize(("gap", "gap_bits", "expected"), [
    # counters 1 + stop reasons 2 (125-register limit) + floats 1 + coils 1 + discrete 1 + bits 1
    (10, 100, 7),
    (4, 49, 7),    # gaps of exactly the limit are still read through
    (3, 49, 45),   # stop reasons 5 apart: 40 requests
    (10, 48, 26),  # discrete inputs 50 apart (gap 49): 20 requests
    (0, 0, 93),    # nothing read through: only adjacent tags share a request
])
def test_realistic_map_of_200_tags_in_the_minimal_number_of_requests(gap: int, gap_bits: int,
                                                                      expected: int) -> None:
    limits = Limits(max_gap=gap, max_gap_bits=gap_bits)
    points = realistic_map()
    blocks = plan(points, limits)
    covers_every_point_once(blocks, points, limits)
    assert len(blocks) == expected
    assert len(blocks) == minimal_contiguous(points, limits)


def test_a_lower_register_limit_means_more_requests() -> None:
    points = realistic_map()
    blocks = plan(points, Limits(max_registers=32))
    covers_every_point_once(blocks, points, Limits(max_registers=32))
    # counters 120 regs -> 4, stop reasons 7 a request -> 6, floats 80 regs -> 3, coils, discrete, bits 1 each
    assert len(blocks) == 16


def test_a_value_is_never_cut_across_two_requests() -> None:
    points = [pt("holding", 0, "float64"), pt("holding", 4, "float64"), pt("holding", 8, "float64")]
    blocks = plan(points, Limits(max_registers=10))
    assert [(b.start, b.count) for b in blocks] == [(0, 8), (8, 4)]


def test_one_request_per_tag_shares_only_identical_spans() -> None:
    points = [pt("holding", 0), pt("holding", 1), pt("holding", 1, "int16"), pt("coil", 5)]
    blocks = plan(points, Limits(request_per_tag=True))
    assert [(b.table, b.start, b.count, len(b.points)) for b in blocks] == [
        ("coil", 5, 1, 1), ("holding", 0, 1, 1), ("holding", 1, 1, 2)]


def test_coils_from_zero() -> None:
    points = [pt("coil", 12), pt("coil", 20), pt("discrete", 12), pt("coil", 3000)]
    blocks = plan(points, Limits(coils_from_zero=True))
    assert [(b.table, b.start, b.count) for b in blocks] == [
        ("coil", 0, 21), ("coil", 3000, 1), ("discrete", 12, 1)]


def test_units_and_tables_never_share_a_request() -> None:
    points = [pt("holding", 0), pt("input", 1), pt("holding", 1, unit=2)]
    assert len(plan(points, Limits())) == 3


def test_split_halves_a_block_by_tag_spans() -> None:
    points = [pt("holding", o) for o in (0, 2, 4, 6, 8)]
    (block,) = plan(points, Limits())
    halves = split(block)
    assert halves is not None
    left, right = halves
    assert [(left.start, left.count), (right.start, right.count)] == [(0, 3), (4, 5)]
    assert {p.key for p in left.points + right.points} == {p.key for p in points}


def test_split_of_one_span_is_impossible() -> None:
    (block,) = plan([pt("holding", 5, "bool", bit=1), pt("holding", 5, "bool", bit=2)], Limits())
    assert split(block) is None


def test_splitting_isolates_a_refused_tag_in_log2_steps() -> None:
    points = [pt("holding", o) for o in range(0, 64)]
    bad = 37
    todo = plan(points, Limits())
    requests = 0
    good: list[Block] = []
    while todo:
        block = todo.pop()
        requests += 1
        if block.start <= bad < block.start + block.count:
            halves = split(block)
            if halves is not None:
                todo.extend(halves)
            continue
        good.append(block)
    assert requests <= 2 * 6 + 1
    assert sorted(p.offset for b in good for p in b.points) == [o for o in range(64) if o != bad]


# ---------------------------------------------------------------- minimality, against brute force


def minimal_contiguous(points: list[Point], limits: Limits) -> int:
    """Fewest runs of consecutive (sorted) tags per unit/table that satisfy the limits (DP)."""
    total = 0
    groups: dict[tuple[int, str], list[Point]] = {}
    for p in points:
        groups.setdefault((p.unit, p.table), []).append(p)
    for (_, table), group in groups.items():
        group.sort(key=lambda p: (p.offset, p.width))
        best = [0] + [10**9] * len(group)
        for j in range(1, len(group) + 1):
            for i in range(j):
                if feasible(group[i:j], limits.size(table), limits.gap(table)):  # type: ignore[arg-type]
                    best[j] = min(best[j], best[i] + 1)
        total += best[-1]
    return total


def feasible(points: list[Point], size: int, gap: int) -> bool:
    ordered = sorted(points, key=lambda p: (p.offset, p.width))
    start, end = ordered[0].offset, ordered[0].end
    for p in ordered[1:]:
        if p.offset - end > gap:
            return False
        end = max(end, p.end)
    return end - start <= size


def partitions(items: list[int]) -> Iterator[list[list[int]]]:
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in partitions(rest):
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1:]]
        yield [[first], *part]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from(["uint16", "uint32", "float64"])),
                min_size=1, max_size=7),
       st.integers(0, 6), st.integers(4, 20))
def test_greedy_plan_is_globally_minimal(tags: list[tuple[int, str]], gap: int, size: int) -> None:
    points = [pt("holding", offset, type_name) for offset, type_name in tags]
    points = [p for p in points if p.width <= size]
    if not points:
        return
    limits = Limits(max_registers=size, max_gap=gap)
    blocks = plan(points, limits)
    covers_every_point_once(blocks, points, limits)
    best = min(len(part) for part in partitions(list(range(len(points))))
               if all(feasible([points[i] for i in block], size, gap) for block in part))
    assert len(blocks) == best
