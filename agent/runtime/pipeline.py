"""The pipeline: readings -> machine logic -> one SQLite transaction per group commit -> uplink wake-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.core.backoff import Backoff
from agent.core.metrics import Metrics
from agent.core.model import Event, Reading, compact
from agent.logic.machine import Logic, Notice
from agent.outbox.store import Outbox, StorageError

log = logging.getLogger(__name__)

TICK = 0.1  # how often time-driven logic (debounce, idle, heartbeats) is evaluated
HELD_EVENTS = 10_000  # events held in memory while the database refuses them, before compacting


@dataclass
class _Batch:
    readings: Sequence[Reading]
    done: asyncio.Future[None] | None = None


class Pipeline:
    """Readings -> logic -> one SQLite transaction per group commit -> uplink wake-up."""

    def __init__(self, logic: Logic, outbox: Outbox, metrics: Metrics, commit_interval: float,
                 on_commit: Callable[[], None]) -> None:
        self.logic = logic
        self.outbox = outbox
        self.metrics = metrics
        self.commit_interval = commit_interval
        self.on_commit = on_commit
        self.queue: asyncio.Queue[_Batch] = asyncio.Queue(maxsize=1000)
        self._events: list[Event] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._warned: set[tuple[str, str, str]] = set()
        self.last_cycle = time.monotonic()  # the watchdog stops while this gets old
        self.last: dict[tuple[str, str], Reading] = {}  # newest reading per tag, for `status`
        self._states: dict[str, dict[str, Any]] = {}  # logic states not yet committed
        self.storage_problem: str | None = None  # the database refuses commits (disk full...)
        self._storage_backoff = Backoff(1.0, 60.0)
        self._retry_at = 0.0
        self._reading_counters: dict[str, Any] = {}  # connection -> its labelled readings counter

    async def emit(self, readings: Sequence[Reading], *, durable: bool = False) -> None:
        done = asyncio.get_running_loop().create_future() if durable else None
        await self.queue.put(_Batch(readings, done))
        if done is not None:
            await done

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_commit = loop.time() + self.commit_interval
        next_tick = loop.time()
        while True:
            timeout = max(0.0, min(next_commit, next_tick) - loop.time())
            with contextlib.suppress(TimeoutError):
                batch = await asyncio.wait_for(self.queue.get(), timeout)
                self._apply(batch)
                while not self.queue.empty():
                    self._apply(self.queue.get_nowait())
            now_mono = loop.time()
            if now_mono >= next_tick:
                self._events.extend(self.logic.tick(time.time()))
                next_tick = now_mono + TICK
            if now_mono >= next_commit or self._waiters:
                await self.commit()
                next_commit = loop.time() + self.commit_interval
            self.last_cycle = time.monotonic()

    def _apply(self, batch: _Batch) -> None:
        now = time.time()
        last = self.last
        for reading in batch.readings:
            last[(reading.connection, reading.tag)] = reading
            self._events.extend(self.logic.apply(reading, now))
        if batch.readings:
            self._readings_of(batch.readings[0].connection).inc(len(batch.readings))
        if batch.done is not None:
            self._waiters.append(batch.done)

    def _readings_of(self, connection: str) -> Any:
        """The connection's readings counter; looked up once, not on every batch."""
        counter = self._reading_counters.get(connection)
        if counter is None:
            counter = self._reading_counters[connection] = self.metrics.readings.labels(connection)
        return counter

    async def commit(self) -> None:
        """Persist logic state and the calls it produced in one transaction.

        If the database refuses (disk full, damaged file) nothing is lost: states and events
        stay in memory (compacted), durable emitters keep waiting, and the commit is tried
        again with backoff. The agent stays up: an alert, not a crash loop."""
        self._notices(self.logic.drain_notices())
        self._states.update(self.logic.dirty_states())
        if self.storage_problem is not None and time.monotonic() < self._retry_at:
            if len(self._events) > HELD_EVENTS:
                self._events = compact(self._events)
            return
        if self._states or self._events:
            try:
                await self.outbox.commit(self._states, self._events, time.time())
            except StorageError as exc:
                self._storage_failed(exc)
                return
            if self._events:
                self.on_commit()
            self._states, self._events = {}, []
        if self.storage_problem is not None:
            log.info("The database takes commits again; nothing was lost")
            self.storage_problem = None
            self._storage_backoff.reset()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _storage_failed(self, exc: StorageError) -> None:
        if self.storage_problem is None:
            log.error("Cannot save to the database: %s. Readings are held in memory (the PLCs "
                      "keep their counts) and saving is retried.", exc)
        self.storage_problem = str(exc)
        self._retry_at = time.monotonic() + self._storage_backoff.next_delay()
        self._events = compact(self._events)

    def _notices(self, notices: list[Notice]) -> None:
        m = self.metrics
        for n in notices:
            if n.kind == "reset":
                m.counter_resets.labels(n.machine, n.role).inc()
                log.info("%s: %s counter reset accepted %s", n.machine, n.role, n.detail)
            elif n.kind == "wrap":
                m.counter_wraps.labels(n.machine, n.role).inc()
                log.info("%s: %s counter wrapped %s", n.machine, n.role, n.detail)
            elif n.kind == "jump_rejected":
                m.counter_rejected.labels(n.machine, n.role).inc()
                log.warning("%s: %s jump refused by max_rate %s", n.machine, n.role, n.detail)
            elif n.kind in ("duplicate", "stale_redelivery"):
                m.duplicates.labels(n.machine).inc()
            elif n.kind == "bad_value":
                m.bad_readings.labels(self.logic.machines()[n.machine].connection, "unusable_value").inc()
                self._warn_once(n, "ignored a value it cannot use")
            elif n.kind == "state_invalid":
                log.warning("%s: the saved state could not be used, starting from a new baseline: %s",
                            n.machine, n.detail)
            elif n.kind in ("rebaseline", "glitch"):
                log.info("%s: %s %s %s", n.machine, n.role, n.kind, n.detail)
            else:
                log.debug("%s: %s %s %s", n.machine, n.role, n.kind, n.detail)

    def _warn_once(self, n: Notice, what: str) -> None:
        key = (n.machine, n.role, n.kind)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s: %s %s: %s (logged once; see the metrics)", n.machine, n.role, what, n.detail)
