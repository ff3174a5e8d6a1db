"""One poll cycle over a link: the plan, refined when the device refuses a block; dead units skipped."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent.core.backoff import Backoff
from agent.sources.modbus.decode import finite
from agent.sources.modbus.link import Link, LinkLost, NoAnswer, Refused
from agent.sources.modbus.planner import Block, Limits, Point, plan, split

log = logging.getLogger(__name__)

# Exception codes that mean "this block is wrong for this device": split it to find the tag.
_SPLIT_CODES = {2, 3}
# ... and "this device never answers this": quarantine. Other codes (busy...) pass: retry next cycle.
_QUARANTINE_CODES = {1, 2, 3}
# Exception codes that mean "nothing answers behind the gateway": the unit is dead.
_DEAD_CODES = {10, 11}
BAD_TAG_RETRY = 60.0  # a refused tag is tried alone again this often (PLC programs change)


@dataclass(frozen=True, slots=True)
class PointResult:
    """What one cycle made of one tag: raw words or bits and the value, or why not."""

    point: Point
    raw: tuple[int | bool, ...] | None
    value: int | float | bool | None
    error: str | None = None
    time: float = 0.0


@dataclass
class _Unit:
    """A unit (slave) behind the connection; a dead one is skipped until its retry is due."""

    unit: int
    backoff: Backoff
    dead_since: float | None = None
    retry_at: float = 0.0
    error: str = ""


@dataclass
class _Quarantine:
    block: Block
    error: str
    retry_at: float


@dataclass
class CycleStats:
    requests: int = 0
    answered: int = 0
    timeouts: int = 0
    refused: list[str] = field(default_factory=list)


class Poller:
    """Reads every point once per `cycle()`; raises `LinkLost`/`OutOfSync` when the link is unusable.

    Keeps across cycles (for one connection): the block plan, refined by splitting blocks the
    device refuses; tags it refuses alone (quarantined, retried every `BAD_TAG_RETRY`); and
    units that stopped answering (skipped, probed again with backoff in the cycle's spare time,
    so that one dead unit behind a gateway does not delay the others).
    """

    def __init__(self, link: Link, points: Sequence[Point], limits: Limits, name: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.link = link
        self.name = name
        self.clock = clock
        self.blocks: list[Block] = plan(points, limits)
        self.quarantine: dict[str, _Quarantine] = {}
        cap = link.config.retry_max
        self.units = {p.unit: _Unit(p.unit, Backoff(1.0, cap)) for p in points}
        self.timeout = link.config.timeout
        self.request_delay = link.config.request_delay
        self.stats = CycleStats()
        self._sent = False
        self._died: list[_Unit] = []

    async def cycle(self, deadline: float | None = None) -> list[PointResult]:
        """One reading per point. `deadline` (monotonic) bounds the probes of dead units."""
        self.stats = CycleStats()
        self._sent = False
        self._died = []
        # Quarantined tags first, so that a tag refused later in this cycle is not tried twice.
        recovered: list[Block] = []
        results = await self._retry_quarantine(recovered)
        probes: list[_Unit] = []
        for unit in self.units.values():
            if unit.dead_since is None:
                results += await self._read_unit(unit)
            elif self.clock() >= unit.retry_at:
                probes.append(unit)
            else:
                results += self._bad_unit(unit)
        for unit in probes:
            results += await self._probe(unit, deadline)
        self.blocks += recovered  # read from the next cycle on, as part of the plan
        if self.stats.timeouts and not self.stats.answered:
            raise LinkLost(f"no unit answers within {self.timeout:g}s")
        # Said only now: when nothing answers at all, the connection is down, and that is the news.
        for unit in self._died:
            log.warning("Unit %d behind %s (%s) does not answer; its tags are bad until it does. %s",
                        unit.unit, self.name, self.link.config.endpoint, unit.error)
        return results

    def blocks_of(self, unit: int) -> list[Block]:
        return [b for b in self.blocks if b.unit == unit]

    async def _send(self, block: Block, limit: float | None = None) -> Sequence[int] | Sequence[bool]:
        if self._sent and self.request_delay:
            await asyncio.sleep(self.request_delay)
        self._sent = True
        self.stats.requests += 1
        try:
            data = await self.link.read(block, limit)
        except NoAnswer:
            self.stats.timeouts += 1
            raise
        except Refused:
            self.stats.answered += 1
            raise
        self.stats.answered += 1
        return data

    async def _read_unit(self, unit: _Unit) -> list[PointResult]:
        results: list[PointResult] = []
        pending = self.blocks_of(unit.unit)
        while pending:
            block = pending.pop(0)
            try:
                results += self._decode(block, await self._send(block))
            except NoAnswer as exc:
                # One timeout per unit and cycle: the rest of the unit waits for its retry.
                self._unit_died(unit, str(exc))
                return results + self._bad_unit(unit, [block, *pending])
            except Refused as exc:
                if exc.code in _DEAD_CODES:
                    self._unit_died(unit, str(exc))
                    return results + self._bad_unit(unit, [block, *pending])
                results += self._refused(block, exc, pending)
        self._unit_alive(unit)
        return results

    async def _probe(self, unit: _Unit, deadline: float | None) -> list[PointResult]:
        """Try a dead unit with one request, in the time left before the next cycle."""
        blocks = self.blocks_of(unit.unit)
        if not blocks:
            self._unit_alive(unit)
            return []
        spare = self.timeout if deadline is None else deadline - self.clock()
        timeout = min(self.timeout, max(spare, self.timeout / 4))
        try:
            await self._send(blocks[0], timeout)
        except NoAnswer:
            unit.retry_at = self.clock() + unit.backoff.next_delay()
            log.debug("%s: unit %d still does not answer", self.name, unit.unit)
            return self._bad_unit(unit)
        except Refused as exc:
            if exc.code in _DEAD_CODES:
                unit.retry_at = self.clock() + unit.backoff.next_delay()
                return self._bad_unit(unit)
        # It answers (data or a refusal of that block): read it in full.
        self._unit_alive(unit)
        return await self._read_unit(unit)

    def _unit_died(self, unit: _Unit, error: str) -> None:
        if unit.dead_since is None:
            unit.dead_since = self.clock()
            self._died.append(unit)
        unit.error = error
        unit.retry_at = self.clock() + unit.backoff.next_delay()

    def _unit_alive(self, unit: _Unit) -> None:
        if unit.dead_since is not None:
            log.info("Unit %d behind %s answers again after %.0fs", unit.unit, self.name,
                     self.clock() - unit.dead_since)
            unit.dead_since = None
        unit.backoff.reset()

    def _bad_unit(self, unit: _Unit, blocks: Sequence[Block] | None = None) -> list[PointResult]:
        now = time.time()
        error = f"unit {unit.unit} does not answer: {unit.error}"
        todo = self.blocks_of(unit.unit) if blocks is None else blocks
        return [PointResult(p, None, None, error, now) for b in todo for p in b.points]

    def _refused(self, block: Block, exc: Refused, pending: list[Block]) -> list[PointResult]:
        """Split a refused block in place, or quarantine its tag(s) when it cannot be split."""
        if exc.code not in _QUARANTINE_CODES:
            log.debug("%s: %s refused for now: %s", self.name, block.describe(), exc)
            return self._bad_block(block, str(exc))
        halves = split(block) if exc.code in _SPLIT_CODES else None
        index = self.blocks.index(block)
        if halves is not None:
            log.debug("%s: %s refused (%s), splitting it", self.name, block.describe(), exc)
            self.blocks[index : index + 1] = halves
            pending[:0] = halves
            return []
        del self.blocks[index]
        self._quarantine_block(block, exc)
        return self._bad_block(block, str(exc))

    def _quarantine_block(self, block: Block, exc: Refused) -> None:
        for point in block.points:
            log.warning("Tag %s of %s cannot be read: the PLC refuses %s with %s; the tag stays bad and "
                        "is tried again every %.0fs", point.key, self.name, point.describe(), exc.short,
                        BAD_TAG_RETRY)
        self.quarantine[block.points[0].key] = _Quarantine(block, str(exc), self.clock() + BAD_TAG_RETRY)

    async def _retry_quarantine(self, recovered: list[Block]) -> list[PointResult]:
        results: list[PointResult] = []
        for key, bad in list(self.quarantine.items()):
            unit = self.units[bad.block.unit]
            if unit.dead_since is not None or self.clock() < bad.retry_at:
                results += self._bad_block(bad.block, bad.error)
                continue
            try:
                data = await self._send(bad.block)
            except (NoAnswer, Refused) as exc:
                bad.retry_at = self.clock() + BAD_TAG_RETRY
                results += self._bad_block(bad.block, str(exc))
                continue
            del self.quarantine[key]
            recovered.append(bad.block)
            for point in bad.block.points:
                log.info("Tag %s of %s can be read again (%s)", point.key, self.name, point.describe())
            results += self._decode(bad.block, data)
        return results

    @staticmethod
    def _bad_block(block: Block, error: str) -> list[PointResult]:
        now = time.time()
        return [PointResult(p, None, None, error, now) for p in block.points]

    @staticmethod
    def _decode(block: Block, data: Sequence[int] | Sequence[bool]) -> list[PointResult]:
        now = time.time()
        results = []
        for point in block.points:
            raw = tuple(block.raw_of(point, data))
            value = point.codec.value(raw)
            if finite(value):
                results.append(PointResult(point, raw, value, None, now))
            else:
                results.append(PointResult(point, raw, None, f"not a number ({value})", now))
        return results
