"""The one place that wires sources, machine logic, outbox and uplink into a running agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from agent.backoff import Backoff
from agent.config import AgentConfig, ConfigError, load_config
from agent.logic import Logic, Notice
from agent.metrics import Metrics
from agent.model import Event, Reading, compact
from agent.outbox import Outbox, StorageError
from agent.secrets import connection_secret
from agent.sources.base import SourceContext
from agent.sources.registry import PROTOCOLS
from agent.uplink import Credentials, Uplink

log = logging.getLogger(__name__)

TICK = 0.1  # how often time-driven logic (debounce, idle, heartbeats) is evaluated
DRAIN_ON_STOP = 5.0  # seconds a clean stop spends sending what is queued
HELD_EVENTS = 10_000  # events held in memory while the database refuses them, before compacting


@dataclass
class _Batch:
    readings: Sequence[Reading]
    done: asyncio.Future[None] | None = None


@dataclass
class ConnectionState:
    up: bool = False
    since: float = field(default_factory=time.time)
    reason: str = ""


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
            self.metrics.readings.labels(batch.readings[0].connection).inc(len(batch.readings))
        if batch.done is not None:
            self._waiters.append(batch.done)

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


class Agent:
    """A running agent: build with a validated config, then `await agent.run()`."""

    def __init__(self, config: AgentConfig, credentials: Credentials, *, dry_run: bool = False,
                 out: TextIO | None = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.credentials = credentials
        self.dry_run = dry_run
        self.out = out
        self.metrics = metrics or Metrics()
        self.connections: dict[str, ConnectionState] = {}
        self.stopping = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.ready: Callable[[], None] = lambda: None
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.pipeline: Pipeline | None = None

    # -- connection state, reported by sources
    def _up(self, name: str) -> None:
        state = self.connections.setdefault(name, ConnectionState())
        if not state.up:
            log.info("Connection %s is up", name)
            state.up, state.since, state.reason = True, time.time(), ""
        self.metrics.connection_up.labels(name).set(1)

    def _down(self, name: str, reason: str) -> None:
        state = self.connections.setdefault(name, ConnectionState())
        if state.up or state.reason != reason:
            # Sources count their failed attempts in connection_errors; this logs transitions.
            log.warning("Connection %s is down: %s", name, reason)
        if state.up or not state.reason:
            state.since = time.time()
        state.up, state.reason = False, reason
        self.metrics.connection_up.labels(name).set(0)

    def _context(self, pipeline: Pipeline) -> SourceContext:
        return SourceContext(emit=pipeline.emit, connection_up=self._up, connection_down=self._down,
                             secret=connection_secret, metrics=self.metrics)

    async def _run_sources(self, config: AgentConfig, ctx: SourceContext) -> None:
        async with asyncio.TaskGroup() as group:
            for conn in config.connections.values():
                if not conn.tags:
                    continue
                factory = PROTOCOLS[conn.protocol].load_source()
                self.connections.setdefault(conn.name, ConnectionState())
                self.metrics.connection_up.labels(conn.name).set(0)
                source = factory(conn.name, conn.config, list(conn.tags.values()), ctx)
                group.create_task(source.run(), name=f"source:{conn.name}")

    async def run(self) -> None:
        """Run until `stopping` is set; then stop sources, commit, drain briefly, close."""
        cfg = self.config
        self.outbox = outbox = await Outbox.open(
            cfg.storage.path, synchronous=cfg.storage.synchronous, max_size_mb=cfg.storage.max_size_mb,
            metrics=self.metrics, waste_without_count=cfg.prodsmart.waste_without_count)
        try:
            self.uplink = uplink = Uplink(outbox, cfg.prodsmart, self.credentials, self.metrics,
                                          dry_run=self.dry_run, out=self.out)
            logic = Logic(cfg.machines, await outbox.load_states())
            self.pipeline = pipeline = Pipeline(logic, outbox, self.metrics, cfg.storage.commit_interval,
                                                uplink.wake)
            await self._serve(pipeline, uplink)
        finally:
            await outbox.close()

    async def _serve(self, pipeline: Pipeline, uplink: Uplink) -> None:
        ctx = self._context(pipeline)
        async with asyncio.TaskGroup() as group:
            pipe_task = group.create_task(pipeline.run(), name="pipeline")
            up_task = group.create_task(self._run_uplink(uplink), name="uplink")
            sources = group.create_task(self._run_sources(self.config, ctx), name="sources")
            self.ready()
            log.info("prodsmart-edge running: %d machines on %d connections%s",
                     len(self.config.machines), len(self.config.connections),
                     " (dry run: nothing is sent)" if self.dry_run else "")
            while not self.stopping.is_set():
                reload_wait = asyncio.create_task(self.reload_requested.wait())
                stop_wait = asyncio.create_task(self.stopping.wait())
                await asyncio.wait({reload_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                reload_wait.cancel()
                stop_wait.cancel()
                if self.reload_requested.is_set() and not self.stopping.is_set():
                    self.reload_requested.clear()
                    sources = await self._reload(pipeline, ctx, sources, group)
            sources.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sources
            pipe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pipe_task
            await pipeline.commit()
            await self._drain(uplink)
            up_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await up_task
        log.info("prodsmart-edge stopped cleanly")

    async def _run_uplink(self, uplink: Uplink) -> None:
        """The uplink, restarted with backoff when the database fails under it (not a crash)."""
        backoff = Backoff(1.0, 60.0)
        while True:
            try:
                await uplink.run()
                return
            except StorageError as exc:
                log.error("Sending paused: the database cannot be read or written: %s", exc)
                await backoff.sleep()

    async def _drain(self, uplink: Uplink) -> None:
        """Give the uplink a moment to send what is queued; what is left stays safely queued."""
        try:
            await uplink.drain(DRAIN_ON_STOP)
        except StorageError:
            pass  # what is queued stays queued; the failure is already in the log

    async def _reload(self, pipeline: Pipeline, ctx: SourceContext, sources: asyncio.Task[None],
                      group: asyncio.TaskGroup) -> asyncio.Task[None]:
        """Apply a new tag map without losing counter state or queued calls; keep the old if invalid."""
        try:
            new = load_config(self.config.path)
        except ConfigError as exc:
            for problem in exc.problems:  # one line each: journald and log shippers read lines
                log.error("Reload refused: %s", problem)
            log.error("Reload refused: %d problem(s); the running configuration is kept",
                      len(exc.problems))
            self.ready()
            return sources
        sources.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sources
        await pipeline.commit()
        assert self.outbox is not None
        pipeline.logic = Logic(new.machines, await self.outbox.load_states())
        self.config = new
        log.info("Configuration reloaded: %d machines on %d connections",
                 len(new.machines), len(new.connections))
        self.ready()
        return group.create_task(self._run_sources(new, ctx), name="sources")


def install_signal_handlers(agent: Agent, on_stop: Callable[[], None] = lambda: None,
                            on_reload: Callable[[], None] = lambda: None) -> None:
    """SIGTERM/SIGINT stop cleanly, SIGHUP reloads the tag map."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        on_stop()
        agent.stopping.set()

    def reload() -> None:
        on_reload()
        agent.reload_requested.set()

    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.add_signal_handler(signal.SIGINT, stop)
    loop.add_signal_handler(signal.SIGHUP, reload)
