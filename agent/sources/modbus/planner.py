"""The read plan: tags of one unit and table merged into as few requests as the limits allow."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby

from agent.sources.base import TagBinding
from agent.sources.modbus.config import BIT_TABLES, ModbusConnection, ModbusTag, Table, modicon
from agent.sources.modbus.decode import Codec


@dataclass(frozen=True, slots=True)
class Point:
    """One tag, resolved: where it lives and how its raw words become a value."""

    key: str
    unit: int
    table: Table
    offset: int
    codec: Codec

    @property
    def width(self) -> int:
        return self.codec.width

    @property
    def end(self) -> int:
        return self.offset + self.width

    def describe(self) -> str:
        """`unit 1 holding 100 (40101)`, for messages and the probe."""
        return f"unit {self.unit} {self.table} {self.offset} ({modicon(self.table, self.offset)})"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may span, and how far two tags may be apart to share one."""

    max_registers: int = 125
    max_bits: int = 2000
    max_gap: int = 10
    max_gap_bits: int = 100
    coils_from_zero: bool = False
    request_per_tag: bool = False

    @classmethod
    def of(cls, config: ModbusConnection) -> Limits:
        return cls(config.max_registers, config.max_bits, config.max_gap, config.max_gap_bits,
                   config.coils_from_zero, config.request_per_tag)

    def size(self, table: Table) -> int:
        return self.max_bits if table in BIT_TABLES else self.max_registers

    def gap(self, table: Table) -> int:
        return self.max_gap_bits if table in BIT_TABLES else self.max_gap


@dataclass(frozen=True, slots=True)
class Block:
    """One read request: `count` registers or bits from `start`, and the tags in them."""

    unit: int
    table: Table
    start: int
    count: int
    points: tuple[Point, ...]

    def raw_of(self, point: Point, data: Sequence[int] | Sequence[bool]) -> Sequence[int] | Sequence[bool]:
        """The slice of a response that belongs to `point`."""
        first = point.offset - self.start
        return data[first : first + point.width]

    def describe(self) -> str:
        last = self.start + self.count - 1
        return (f"unit {self.unit} {self.table} {self.start}..{last} "
                f"({modicon(self.table, self.start)}..{modicon(self.table, last)})")


def point_of(binding: TagBinding, default_unit: int) -> Point:
    """A tag binding as a point; its spec was validated as a `ModbusTag`."""
    spec = binding.spec
    assert isinstance(spec, ModbusTag)
    table, offset = spec.location
    codec = Codec(spec.type or "uint16", spec.effective_order, spec.bit)
    unit = spec.unit if spec.unit is not None else default_unit
    return Point(binding.key, unit, table, offset, codec)


def _block(points: Sequence[Point], start: int | None = None) -> Block:
    first = points[0]
    begin = min(p.offset for p in points) if start is None else start
    end = max(p.end for p in points)
    return Block(first.unit, first.table, begin, end - begin, tuple(points))


def _merge(points: Sequence[Point], limits: Limits) -> list[Block]:
    """Greedy merge of one unit's table, sorted by offset: minimal for contiguous runs.

    A block grows while the next tag starts at most `gap` past the block's end and the
    block stays within the request size. Taking every tag that fits never hurts: any
    cheaper split would have to end some block earlier, leaving more for the rest.
    """
    table = points[0].table
    size, gap = limits.size(table), limits.gap(table)
    from_zero = limits.coils_from_zero and table == "coil"
    blocks: list[Block] = []
    run: list[Point] = []
    start = end = 0
    for point in sorted(points, key=lambda p: (p.offset, p.width)):
        if limits.request_per_tag:
            fits = bool(run) and (point.offset, point.end) == (start, end)
        else:
            fits = bool(run) and point.offset - end <= gap and max(end, point.end) - start <= size
        if fits:
            run.append(point)
            end = max(end, point.end)
            continue
        if run:
            blocks.append(_block(run, start))
        # Devices that only read coils from 0 get a first block that starts there.
        start = 0 if from_zero and not blocks and point.end <= size else point.offset
        run, end = [point], point.end
    if run:
        blocks.append(_block(run, start))
    return blocks


def plan(points: Iterable[Point], limits: Limits) -> list[Block]:
    """Every point in exactly one block; blocks ordered by unit, table, start."""
    order = {t: i for i, t in enumerate(("coil", "discrete", "holding", "input"))}
    ranked = sorted(points, key=lambda p: (p.unit, order[p.table], p.offset))
    blocks: list[Block] = []
    for _, group in groupby(ranked, key=lambda p: (p.unit, p.table)):
        blocks.extend(_merge(list(group), limits))
    return blocks


def split(block: Block) -> tuple[Block, Block] | None:
    """Two blocks covering the block's tags in halves, or None if they all share one span.

    Used when the device refuses a block (illegal address): halving isolates the tag or the
    read-through gap that the device does not have, in log2(n) steps.
    """
    spans = sorted({(p.offset, p.end) for p in block.points})
    if len(spans) < 2:
        return None
    cut = spans[len(spans) // 2]
    left = [p for p in block.points if (p.offset, p.end) < cut]
    right = [p for p in block.points if (p.offset, p.end) >= cut]
    return _block(left), _block(right)


def describe_plan(blocks: Sequence[Block]) -> list[str]:
    """One line per request, for `probe --plan`."""
    return [f"{b.describe():<50} {b.count:>5} {'bits' if b.table in BIT_TABLES else 'regs'}  "
            f"{len(b.points)} tag(s)" for b in blocks]
