"""The one place that wires sources, machine logic, outbox and uplink into a running agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from agent.config.loader import load_config
from agent.config.problems import ConfigError
from agent.config.secrets import connection_secret, redis_secrets
from agent.config.specs import AgentConfig
from agent.core.backoff import Backoff
from agent.core.metrics import Metrics
from agent.logic.machine import Logic
from agent.outbox.store import Outbox, StorageError
from agent.runtime.pipeline import Pipeline
from agent.sources.base import SourceContext
from agent.sources.registry import PROTOCOLS
from agent.uplink.budget import open_budget
from agent.uplink.client import Credentials, Uplink

log = logging.getLogger(__name__)

DRAIN_ON_STOP = 5.0  # seconds a clean stop spends sending what is queued
SOURCES_STOP = 5.0  # seconds a reload or a stop waits for the sources to close


@dataclass
class ConnectionState:
    up: bool = False
    since: float = field(default_factory=time.time)
    reason: str = ""


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
        self._sources: asyncio.Task[None] | None = None
        self._source_tasks: list[asyncio.Task[None]] = []

    # -- connection state, reported by sources
    def _up(self, name: str) -> None:
        state = self.connections.setdefault(name, ConnectionState())
        if not state.up:
            log.info("Connection %s is up", name)
            state.up, state.since, state.reason = True, time.time(), ""
        self.metrics.connection_up.labels(name).set(1)
        if self.pipeline is not None:
            self.pipeline.connection(name, True)

    def _down(self, name: str, reason: str) -> None:
        state = self.connections.setdefault(name, ConnectionState())
        if state.up or state.reason != reason:
            # Sources count their failed attempts in connection_errors; this logs transitions.
            log.warning("Connection %s is down: %s", name, reason)
        if state.up or not state.reason:
            state.since = time.time()
        state.up, state.reason = False, reason
        self.metrics.connection_up.labels(name).set(0)
        if self.pipeline is not None:
            self.pipeline.connection(name, False)

    def _context(self, pipeline: Pipeline) -> SourceContext:
        return SourceContext(emit=pipeline.emit, connection_up=self._up, connection_down=self._down,
                             secret=connection_secret, metrics=self.metrics,
                             commit_interval=pipeline.commit_interval)

    async def _run_sources(self, config: AgentConfig, ctx: SourceContext) -> None:
        async with asyncio.TaskGroup() as group:
            for conn in config.connections.values():
                if not conn.tags:
                    continue
                factory = PROTOCOLS[conn.protocol].load_source()
                self.connections.setdefault(conn.name, ConnectionState())
                self.metrics.connection_up.labels(conn.name).set(0)
                source = factory(conn.name, conn.config, list(conn.tags.values()), ctx)
                self._source_tasks.append(group.create_task(source.run(), name=f"source:{conn.name}"))

    async def run(self) -> None:
        """Run until `stopping` is set; then stop sources, commit, drain briefly, close."""
        cfg = self.config
        # Stable across restarts, distinct for agents of one PC: the shared budget counts agents by it.
        agent_id = f"{socket.gethostname()}:{cfg.storage.path}"
        # A dry run sends nothing: it neither needs Redis nor counts as one of the company's agents.
        settings = cfg.prodsmart.model_copy(update={"budget": None}) if self.dry_run else cfg.prodsmart
        budget = open_budget(settings, self.metrics, agent_id, *redis_secrets())
        self.outbox = outbox = await Outbox.open(
            cfg.storage.path, synchronous=cfg.storage.synchronous, max_size_mb=cfg.storage.max_size_mb,
            metrics=self.metrics, waste_without_count=cfg.prodsmart.waste_without_count,
            access="copy" if self.dry_run else "agent")  # a dry run leaves the database as found
        try:
            self.uplink = uplink = Uplink(outbox, cfg.prodsmart, self.credentials, self.metrics,
                                          dry_run=self.dry_run, out=self.out, budget=budget)
            logic = Logic(cfg.machines, await outbox.load_states(), floors=await outbox.known_totals())
            self.pipeline = pipeline = Pipeline(logic, outbox, self.metrics, cfg.storage.commit_interval,
                                                uplink.wake)
            await self._serve(pipeline, uplink)
        finally:
            await budget.close()
            await outbox.close()

    async def _serve(self, pipeline: Pipeline, uplink: Uplink) -> None:
        ctx = self._context(pipeline)
        async with asyncio.TaskGroup() as group:
            pipe_task = group.create_task(pipeline.run(), name="pipeline")
            up_task = group.create_task(self._run_uplink(uplink), name="uplink")
            self._sources = group.create_task(self._run_sources(self.config, ctx), name="sources")
            self.ready()
            log.info("prodsmart-edge running: %d machines on %d connections%s",
                     len(self.config.machines), len(self.config.connections),
                     " (dry run: nothing is sent)" if self.dry_run else "")
            stop_wait = asyncio.create_task(self.stopping.wait())
            while not self.stopping.is_set():
                reload_wait = asyncio.create_task(self.reload_requested.wait())
                await asyncio.wait({reload_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                reload_wait.cancel()
                if self.reload_requested.is_set() and not self.stopping.is_set():
                    self.reload_requested.clear()
                    # A stop is answered at once, also in the middle of a reload.
                    reloading = asyncio.create_task(self._reload(pipeline, ctx, group))
                    await asyncio.wait({reloading, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    if not reloading.done():
                        reloading.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reloading
            stop_wait.cancel()
            await self._stop_sources()
            await stop_tasks([pipe_task], None)
            with contextlib.suppress(asyncio.CancelledError):
                await pipe_task
            await pipeline.commit()
            await self._drain(uplink)
            up_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await up_task
        log.info("prodsmart-edge stopped cleanly")

    async def _stop_sources(self) -> None:
        """Cancel the sources and wait for them to close."""
        sources, tasks = self._sources, self._source_tasks
        self._source_tasks = []
        if sources is None:
            return
        if not await stop_tasks([*tasks, sources], SOURCES_STOP):
            log.warning("The sources did not stop within %.0f s; still cancelling them", SOURCES_STOP)
            await stop_tasks([*tasks, sources], None)
        with contextlib.suppress(asyncio.CancelledError):
            await sources

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

    async def _reload(self, pipeline: Pipeline, ctx: SourceContext, group: asyncio.TaskGroup) -> None:
        """Apply a new tag map without losing counter state or queued calls; keep the old if invalid.

        The sources stop, the pipeline swaps its logic inside its own loop (after every reading
        they queued), then the new sources start."""
        try:
            new = load_config(self.config.path)
        except ConfigError as exc:
            for problem in exc.problems:  # one line each: journald and log shippers read lines
                log.error("Reload refused: %s", problem)
            log.error("Reload refused: %d problem(s); the running configuration is kept",
                      len(exc.problems))
            self.ready()
            return
        await self._stop_sources()
        await pipeline.reload(new.machines)
        self.config = new
        self._sources = group.create_task(self._run_sources(new, ctx), name="sources")
        log.info("Configuration reloaded: %d machines on %d connections",
                 len(new.machines), len(new.connections))
        self.ready()


async def stop_tasks(tasks: list[asyncio.Task[None]], within: float | None) -> bool:
    """Cancel `tasks` until they are done (True), or `within` seconds have passed (False).

    Cancelling again matters: on Python 3.11 `asyncio.wait_for` (in libraries, e.g. pymodbus's
    transaction) can swallow a cancellation that arrives as its inner future completes, and the
    task then goes on as if nothing happened: a reload or a SIGTERM that never finishes."""
    loop = asyncio.get_running_loop()
    deadline = None if within is None else loop.time() + within
    while True:
        live = [t for t in tasks if not t.done()]
        if not live:
            return True
        if deadline is not None and loop.time() >= deadline:
            return False
        for task in live:
            task.cancel()
        await asyncio.wait(live, timeout=0.25)


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
