"""The Modbus source: connect, poll on a steady schedule, reconnect with backoff, emit readings."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from agent.core.backoff import Backoff
from agent.core.model import Quality, Reading
from agent.sources.base import SourceContext, TagBinding
from agent.sources.modbus.config import ModbusConnection
from agent.sources.modbus.link import Link, LinkError, OutOfSync
from agent.sources.modbus.planner import Limits, Point, point_of
from agent.sources.modbus.poller import PointResult, Poller

log = logging.getLogger(__name__)


@dataclass
class Schedule:
    """Cycle starts at t0 + k * interval on the monotonic clock: no drift, overruns skip ticks."""

    interval: float
    next_at: float
    overruns: int = 0

    def advance(self, now: float) -> float:
        """Move to the next tick after `now`; the seconds to sleep until it."""
        self.next_at += self.interval
        if now > self.next_at:
            # Late: count it and skip the ticks already missed rather than bursting to catch up.
            self.overruns += 1
            missed = int((now - self.next_at) // self.interval) + 1
            self.next_at += missed * self.interval
        return self.next_at - now


class ModbusSource:
    """Polls one Modbus TCP/RTU connection (all its units) until cancelled."""

    def __init__(self, name: str, config: ModbusConnection, tags: Sequence[TagBinding],
                 ctx: SourceContext) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self.points: list[Point] = [point_of(t, config.unit) for t in tags]
        self.limits = Limits.of(config)
        self.link = Link(config, name)
        self.backoff = Backoff(1.0, config.retry_max)
        self.poller: Poller | None = None  # the current connection's (plan, unit states)
        self.cycles = 0
        self.overruns = 0
        self._up: bool | None = None  # None: not reported yet

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.link.open()
                    self.poller = Poller(self.link, self.points, self.limits, self.name)
                    await self._poll(self.poller)
                except OutOfSync as exc:
                    # A late or foreign answer: reopen at once so it cannot be taken for the next
                    # one (fresh connection, fresh transaction ids), then carry on.
                    log.debug("%s: resynchronising: %s", self.name, exc)
                    self._count_error()
                    self.link.close()
                    if self.backoff.attempts == 0:
                        self.backoff.attempts = 1  # a second resync in a row waits
                        continue
                    await self._down(str(exc))
                except LinkError as exc:
                    self.link.close()
                    await self._down(str(exc))
                await self.backoff.sleep()
        finally:
            self.link.close()

    async def _poll(self, poller: Poller) -> None:
        schedule = Schedule(self.config.poll, time.monotonic())
        while True:
            results = await poller.cycle(deadline=schedule.next_at + self.config.poll)
            self.cycles += 1
            if poller.stats.answered or not poller.stats.requests:
                self.backoff.reset()
                self._report_up()
            await self.ctx.emit([self._reading(r) for r in results])
            before = schedule.overruns
            delay = schedule.advance(time.monotonic())
            if schedule.overruns > before:
                self.overruns += 1
                if self.ctx.metrics is not None:
                    self.ctx.metrics.poll_overruns.labels(self.name).inc()
                log.debug("%s: a poll cycle overran its %gs interval", self.name, self.config.poll)
            await asyncio.sleep(delay)

    def _reading(self, result: PointResult) -> Reading:
        if result.error is not None:
            return Reading(self.name, result.point.key, None, Quality.BAD, None, result.time,
                           error=result.error)
        return Reading(self.name, result.point.key, result.value, Quality.GOOD, None, result.time)

    def _report_up(self) -> None:
        if self._up is not True:
            self._up = True
            self.ctx.connection_up(self.name)

    async def _down(self, reason: str) -> None:
        """Report the connection down once, and mark every tag bad once."""
        self._count_error()
        log.debug("%s: %s", self.name, reason)
        if self._up is False:
            return
        self._up = False
        self.ctx.connection_down(self.name, f"Cannot reach the PLC at {self.config.endpoint}: {reason}")
        now = time.time()
        await self.ctx.emit([Reading(self.name, p.key, None, Quality.BAD, None, now, error=reason)
                             for p in self.points])

    def _count_error(self) -> None:
        if self.ctx.metrics is not None:
            self.ctx.metrics.connection_errors.labels(self.name).inc()
