"""The OPC UA source: connect, read what was missed, subscribe (or poll), reconnect afresh with backoff.

Each connection attempt uses a new Link (a new asyncua client). After connecting, every node is
resolved (namespace URIs and browse paths, which may change when the server restarts) and read
once, so that a counter that moved while the agent was disconnected is counted at once; then the
nodes are watched through one subscription (or read every `sampling` in poll mode). A node the
server does not know is set aside ("quarantined") and tried again every `retry_nodes`, while the
other nodes keep working.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from asyncua import ua

from agent.core.backoff import Backoff
from agent.core.model import Quality, Reading
from agent.sources.base import SourceContext, TagBinding, connection_env_name
from agent.sources.opcua.config import OpcUaConnection
from agent.sources.opcua.errors import LinkError
from agent.sources.opcua.link import Link, Point
from agent.sources.opcua.security import Credentials, Trust
from agent.sources.opcua.values import NODE_INVALID, describe, to_reading

log = logging.getLogger(__name__)

HEALTHY_AFTER = 10.0  # a session that lived this long resets the backoff; a flapping one does not


def quiet_library_logs() -> None:
    """asyncua logs every publish at INFO and expected faults with tracebacks at ERROR; the source
    reports those faults itself, in plain words, so keep asyncua out of a technician's journal."""
    level = logging.WARNING if logging.getLogger().getEffectiveLevel() <= logging.DEBUG else logging.CRITICAL
    logging.getLogger("asyncua").setLevel(level)


@dataclass
class _Quarantined:
    reason: str
    retry_at: float


class OpcUaSource:
    """Watches the nodes of one OPC UA server until cancelled."""

    def __init__(self, name: str, config: OpcUaConnection, tags: Sequence[TagBinding],
                 ctx: SourceContext) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self.points = {p.key: p for p in (Point.of(t) for t in tags)}
        self.trust = Trust(config.trust, name, config.url)
        self.backoff = Backoff(1.0, config.retry_max)
        self.quarantine: dict[str, _Quarantined] = {}
        self._up: bool | None = None
        self._reason = ""
        self._nodes: dict[str, ua.NodeId] = {}  # resolved nodes of the current session
        quiet_library_logs()

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except LinkError as exc:
                await self._down(str(exc))
            if time.monotonic() - started >= HEALTHY_AFTER:
                self.backoff.reset()
            await self.backoff.sleep()

    def credentials(self) -> Credentials:
        key_password = self.ctx.secret(self.name, "key_password")
        if self.config.auth == "anonymous":
            return Credentials(key_password=key_password)
        username, password = self.ctx.secret(self.name, "username"), self.ctx.secret(self.name, "password")
        if username is None or password is None:
            raise LinkError(f"auth: username needs the user name and password in "
                            f"{connection_env_name(self.name, 'username')} and "
                            f"{connection_env_name(self.name, 'password')} (or systemd credentials)")
        return Credentials(username, password, key_password)

    async def _session(self) -> None:
        link = Link(self.config, self.credentials(), self.trust)
        try:
            await link.open()
            await self._start(link)
            self._report_up()
            if self.config.mode == "subscribe":
                await self._follow(link)
            else:
                await self._poll(link)
        finally:
            await link.close()

    # ------------------------------------------------------------------------- start-up

    async def _start(self, link: Link) -> None:
        """Resolve and read every node (the values missed while away), then watch them."""
        self._nodes = {}
        await self._add(link, list(self.points.values()))

    async def _add(self, link: Link, points: Sequence[Point]) -> None:
        """Resolve, read and (when subscribing) watch `points`; quarantine those that fail."""
        nodes, failed = await link.resolve(points)
        values = await link.read(nodes)
        now = time.time()
        readings: list[Reading] = []
        for key, dv in values.items():
            status = dv.StatusCode.name if dv.StatusCode is not None else "Good"
            if status in NODE_INVALID:
                failed[key] = describe(status)
            else:
                readings.append(to_reading(self.name, key, dv, self.points[key].index, now))
        good = {k: n for k, n in nodes.items() if k not in failed}
        if self.config.mode == "subscribe" and good:
            failed.update(await link.watch(good))
        self._nodes.update({k: n for k, n in good.items() if k not in failed})
        for key in self._nodes.keys() & self.quarantine.keys():
            log.info("%s: node %s is readable again", self.name, self.points[key].address)
            del self.quarantine[key]
        readings += self._set_aside(failed, now)
        if readings:
            await self.ctx.emit(readings)

    def _set_aside(self, failed: Mapping[str, str], now: float) -> list[Reading]:
        """Quarantine nodes; warn once per node and reason; a BAD reading for each new one."""
        readings = []
        for key, reason in failed.items():
            old = self.quarantine.get(key)
            if old is None or old.reason != reason:
                log.warning("%s: node %s %s: it is set aside and tried again every %gs; the other "
                            "nodes keep working", self.name, self.points[key].address, reason,
                            self.config.retry_nodes)
                readings.append(Reading(self.name, key, None, Quality.BAD, None, now, error=reason))
            self.quarantine[key] = _Quarantined(reason, time.monotonic() + self.config.retry_nodes)
        return readings

    async def _retry_quarantined(self, link: Link) -> None:
        now = time.monotonic()
        due = [self.points[k] for k, q in self.quarantine.items() if q.retry_at <= now]
        if due:
            await self._add(link, due)

    def _next_retry(self) -> float:
        return min((q.retry_at for q in self.quarantine.values()), default=float("inf"))

    # ------------------------------------------------------------------------- running

    async def _follow(self, link: Link) -> None:
        """Emit each batch of data changes; quarantine nodes the server says became invalid."""
        while True:
            wait = min(1.0, max(0.0, self._next_retry() - time.monotonic()))
            changes = await link.changes(wait)
            if changes:
                await self._emit_changes(link, changes)
            await self._retry_quarantined(link)

    async def _emit_changes(self, link: Link, changes: Iterable[tuple[str, ua.DataValue]]) -> None:
        now = time.time()
        readings: list[Reading] = []
        invalid: dict[str, str] = {}
        for key, dv in changes:
            if dv.StatusCode is not None and dv.StatusCode.name in NODE_INVALID:
                invalid[key] = describe(dv.StatusCode.name)
            else:
                readings.append(to_reading(self.name, key, dv, self.points[key].index, now))
        if invalid:
            await link.unwatch(list(invalid))
            for key in invalid:
                self._nodes.pop(key, None)
            readings += self._set_aside(invalid, now)
        await self.ctx.emit(readings)

    async def _poll(self, link: Link) -> None:
        """Read every node each `sampling`, on a steady schedule (late cycles are skipped, not bunched)."""
        interval = self.config.sampling
        next_at = time.monotonic()
        while True:
            values = await link.read(self._nodes)
            await self._emit_changes(link, values.items())
            await self._retry_quarantined(link)
            next_at += interval
            now = time.monotonic()
            if now > next_at:
                if self.ctx.metrics is not None:
                    self.ctx.metrics.poll_overruns.labels(self.name).inc()
                next_at = now
            await asyncio.sleep(next_at - now)

    # ------------------------------------------------------------------------- state

    def _report_up(self) -> None:
        if self._up is not True:  # the service logs the transition
            self._up = True
            self.ctx.connection_up(self.name)

    async def _down(self, reason: str) -> None:
        """Report the connection down once per reason, and mark every tag bad once."""
        log.debug("%s: %s", self.name, reason)
        if self._up is False and reason == self._reason:
            return
        was_up = self._up is not False
        self._up, self._reason = False, reason
        self.ctx.connection_down(self.name, reason)
        if was_up:
            now = time.time()
            await self.ctx.emit([Reading(self.name, key, None, Quality.BAD, None, now, error=reason)
                                 for key in self.points])
