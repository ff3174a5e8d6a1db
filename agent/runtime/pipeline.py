"""The pipeline: readings -> machine logic -> one SQLite transaction per group commit -> uplink wake-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.config.specs import MachineSpec
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


@dataclass
class _Reload:
    machines: Mapping[str, MachineSpec]
    done: asyncio.Future[None]


class Pipeline:
    """Readings -> logic -> one SQLite transaction per group commit -> uplink wake-up.

    `run()` is the one owner of the logic and of the events not yet committed: readings and
    reloads reach it through one queue, in order, and only its loop commits while it runs."""

    def __init__(self, logic: Logic, outbox: Outbox, metrics: Metrics, commit_interval: float,
                 on_commit: Callable[[], None]) -> None:
        self.logic = logic
        self.outbox = outbox
        self.metrics = metrics
        self.commit_interval = commit_interval
        self.on_commit = on_commit
        self.queue: asyncio.Queue[_Batch | _Reload] = asyncio.Queue(maxsize=1000)
        self._events: list[Event] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._warned: set[tuple[str, str, str]] = set()
        self.last_cycle = time.monotonic()  # the watchdog stops while this gets old
        self.last: dict[tuple[str, str], Reading] = {}  # newest reading per tag, for `status`
        self._states: dict[str, dict[str, Any]] = {}  # logic states not yet committed
        self._ids: list[tuple[str, str, str]] = []  # delta message ids not yet committed
        self.storage_problem: str | None = None  # the database refuses commits (disk full...)
        self._storage_backoff = Backoff(1.0, 60.0)
        self._retry_at = 0.0
        self._failure: Exception | None = None  # why the last _store_one failed
        self._aside_logged: set[tuple[str, str]] = set()
        self._down: set[str] = set()  # connections reported down
        self._reading_counters: dict[str, Any] = {}  # connection -> its labelled readings counter

    async def emit(self, readings: Sequence[Reading], *, durable: bool = False) -> None:
        done = asyncio.get_running_loop().create_future() if durable else None
        await self.queue.put(_Batch(readings, done))
        if done is not None:
            await done

    async def reload(self, machines: Mapping[str, MachineSpec]) -> None:
        """Swap in a new tag map, inside the loop of `run()`, after every reading queued before.
        Counter totals, run states and a debounce under way carry over."""
        done = asyncio.get_running_loop().create_future()
        await self.queue.put(_Reload(machines, done))
        await done

    def connection(self, name: str, up: bool) -> None:
        """A source reports its connection down or up (idle detection pauses while it is down)."""
        if up:
            self._down.discard(name)
        else:
            self._down.add(name)
        try:
            self.logic.connection(name, up, time.monotonic())
        except Exception as exc:  # a bug: never stop the agent for it
            self._set_aside("connection state", name, exc)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_commit = loop.time() + self.commit_interval
        next_tick = loop.time()
        while True:
            timeout = max(0.0, min(next_commit, next_tick) - loop.time())
            item: _Batch | _Reload | None = None
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                async with asyncio.timeout(timeout):
                    item = await self.queue.get()
            while item is not None:
                if isinstance(item, _Reload):
                    await self._swap(item)
                else:
                    self._apply(item)
                item = None if self.queue.empty() else self.queue.get_nowait()
            now_mono = loop.time()
            if now_mono >= next_tick:
                self._tick()
                next_tick = now_mono + TICK
            if now_mono >= next_commit or self._waiters:
                await self.commit()
                next_commit = loop.time() + self.commit_interval
            self.last_cycle = time.monotonic()

    def _tick(self) -> None:
        try:
            self._events.extend(self.logic.tick(time.monotonic()))
        except Exception as exc:  # a bug: logged once, the next tick tries again
            self._set_aside("tick", "time-driven logic (debounce, idle, heartbeats)", exc)

    async def _swap(self, request: _Reload) -> None:
        """Commit what the old logic produced, then build the new one from its full state."""
        await self.commit()
        states: dict[str, dict[str, Any]] = {}
        floors: dict[str, dict[str, int]] = {}
        try:
            states.update(await self.outbox.load_states())
            floors = await self.outbox.known_totals()
        except StorageError as exc:  # what this process holds is enough for its own machines
            log.warning("Reload: cannot read the saved states (%s); using those in memory", exc)
        states.update(self._states)  # not committed yet (the database refuses)
        states.update(self.logic.all_states())
        self._notices(self.logic.drain_notices())
        now = time.monotonic()
        self.logic = Logic(request.machines, states, now=now, floors=floors)
        for name in self._down:
            self.logic.connection(name, False, now)
        if not request.done.done():
            request.done.set_result(None)

    def _apply(self, batch: _Batch) -> None:
        now = time.monotonic()  # the logic measures elapsed time: a wall-clock step must not move it
        last = self.last
        for reading in batch.readings:
            last[(reading.connection, reading.tag)] = reading
            try:
                self._events.extend(self.logic.apply(reading, now))
            except Exception as exc:  # a bug or a value no layer caught: never stop the agent for it
                self._set_aside("reading", f"{reading.connection} {reading.tag} = {reading.value!r:.60}", exc)
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
        again with backoff. The agent stays up: an alert, not a crash loop. A state or event
        that the database cannot take for what it is (not for lack of room) is set aside with
        a logged reason; the rest of the batch is committed."""
        self._notices(self.logic.drain_notices())
        self._states.update(self.logic.dirty_states())
        self._ids.extend(self.logic.drain_delta_ids())
        if self.storage_problem is not None and time.monotonic() < self._retry_at:
            if len(self._events) > HELD_EVENTS:
                self._events = compact(self._events)
            return
        if self._states or self._events:
            states, events, ids = self._states, self._events, self._ids
            self._states, self._events, self._ids = {}, [], []
            try:
                # Synced when it releases durable emitters: their acknowledgements follow it.
                stored = await self._store(states, events, ids, sync=bool(self._waiters))
            except StorageError as exc:
                # What was not stored goes back in front of anything newer.
                self._states = {**states, **self._states}
                self._events = events + self._events
                self._ids = ids + self._ids
                self._storage_failed(exc)
                return
            if stored:
                self.on_commit()
        if self.storage_problem is not None:
            log.info("The database takes commits again; nothing was lost")
            self.storage_problem = None
            self._storage_backoff.reset()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _store(self, states: dict[str, dict[str, Any]], events: list[Event],
                     ids: list[tuple[str, str, str]], *, sync: bool = False) -> bool:
        """Commit `states`, `events` and delta `ids`, emptying them; True if events were queued.
        What raises anything but `StorageError` is committed machine by machine, then item by
        item, and the items that fail alone are set aside. On `StorageError` what is left was
        not stored."""
        try:
            await self.outbox.commit(states, events, time.time(), ids, sync=sync)
        except StorageError:
            raise
        except Exception as exc:
            log.debug("A commit failed (%s); committing machine by machine", exc)
        else:
            queued = bool(events)
            states.clear()
            events.clear()
            ids.clear()
            return queued
        queued = False
        for machine in sorted({*states, *(e.machine for e in events), *(i[0] for i in ids)}):
            mine = [e for e in events if e.machine == machine]
            state = {machine: states[machine]} if machine in states else {}
            my_ids = [i for i in ids if i[0] == machine]
            if not await self._store_one(state, mine, my_ids, sync):
                if (state or my_ids) and not await self._store_one(state, [], my_ids, sync):
                    self._set_aside("state", machine, None)
                for event in mine:
                    if not await self._store_one({}, [event], [], sync):
                        self._set_aside("event", repr(event)[:200], None)
                    else:
                        queued = True
            else:
                queued = queued or bool(mine)
            states.pop(machine, None)
            events[:] = [e for e in events if e.machine != machine]
            ids[:] = [i for i in ids if i[0] != machine]
        return queued

    async def _store_one(self, states: dict[str, dict[str, Any]], events: list[Event],
                         ids: list[tuple[str, str, str]], sync: bool) -> bool:
        try:
            await self.outbox.commit(states, events, time.time(), ids, sync=sync)
        except StorageError:
            raise
        except Exception as exc:
            self._failure = exc
            return False
        return True

    def _set_aside(self, what: str, detail: str, exc: Exception | None) -> None:
        exc = exc or self._failure
        self.metrics.set_aside.labels(what).inc()
        key = (what, type(exc).__name__)
        if key in self._aside_logged:
            log.debug("Set aside a %s (%s: %s): %s", what, type(exc).__name__, exc, detail)
            return
        self._aside_logged.add(key)
        log.error("Set aside a %s that cannot be applied or stored (%s: %s): %s; everything else goes "
                  "on (logged once per kind; see prodsmart_edge_set_aside_total)",
                  what, type(exc).__name__, exc, detail)

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
