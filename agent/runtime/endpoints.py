"""Operations around a running agent: /metrics and /healthz, gauges, and systemd status/watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.config.specs import machine_tags
from agent.outbox.types import StorageError
from agent.runtime.console.auth import host_is_loopback, is_loopback
from agent.runtime.console.web import WRONG_HOST, Console, Request, Response, read_request
from agent.runtime.service import Agent
from agent.runtime.systemd import Notifier

log = logging.getLogger(__name__)

STATUS_EVERY = 2.0  # seconds between gauge/STATUS refreshes
REASONS = {200: "OK", 303: "See Other", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Health:
    healthy: bool
    problems: tuple[str, ...]
    depth: int
    oldest_pending: float
    connections_up: int
    connections: int


async def assess(agent: Agent) -> Health:
    """What /healthz, STATUS= and the queue gauges report, from one look at the agent."""
    now = time.time()
    cfg = agent.config
    problems: list[str] = []
    depth, oldest = 0, 0.0
    if agent.outbox is not None:
        try:
            for s in await agent.outbox.stats(now):  # also refreshes the queue gauges
                depth += s.depth
                oldest = max(oldest, s.oldest_pending_age or 0.0)
        except StorageError as exc:
            problems.append(f"database: {exc}")
    if agent.pipeline is not None and agent.pipeline.storage_problem is not None:
        problems.append(f"database refuses commits: {agent.pipeline.storage_problem}")
    up = 0
    for name, state in agent.connections.items():
        if state.up:
            up += 1
        elif now - state.since > cfg.health.max_connection_down:
            problems.append(f"connection {name} down for {now - state.since:.0f}s: {state.reason}")
    if oldest > cfg.health.max_pending_age:
        problems.append(f"oldest queued call waiting {oldest:.0f}s")
    if agent.uplink is not None and agent.uplink.paused == "auth":
        problems.append("Prodsmart refuses the API credentials")
    if agent.uplink is not None:
        problems += [f"Prodsmart forbids machine {m} (HTTP 403)" for m in agent.uplink.forbidden]
    return Health(not problems, tuple(problems), depth, oldest, up, len(agent.connections))


def live_status(agent: Agent) -> dict[str, object]:
    """Connections and the last reading of every tag, by machine role (for `status`)."""
    now = time.time()
    last = agent.pipeline.last if agent.pipeline is not None else {}
    connections = {name: {"up": c.up, "since": c.since, "reason": c.reason}
                   for name, c in agent.connections.items()}
    machines: dict[str, dict[str, object]] = {}
    for code, m in agent.config.machines.items():
        roles: dict[str, object] = {}
        for role, key in machine_tags(m):
            r = last.get((m.connection, key))
            roles[role] = None if r is None else {
                "value": r.value, "quality": r.quality.value, "age": round(now - r.received_time, 1)}
        machines[code] = roles
    return {"connections": connections, "machines": machines, "paused": agent.uplink.paused
            if agent.uplink is not None else None}


async def status_document(agent: Agent) -> dict[str, object]:
    """The /status JSON: `live_status`, each machine's count lag in seconds (0: Prodsmart has every
    part) and the request budget (mode local/shared/fallback, requests a minute, agents seen)."""
    doc = live_status(agent)
    lags: dict[str, float] = {}
    if agent.outbox is not None:
        try:
            lags = await agent.outbox.count_lags(time.time())
        except StorageError:
            pass  # /healthz reports the database; the rest of the status still helps
    machines = sorted(set(agent.config.machines) | set(lags))
    doc["lag"] = {code: round(lags.get(code, 0.0), 1) for code in machines}
    doc["budget"] = agent.uplink.budget.describe() if agent.uplink is not None else None
    return doc


def misaddressed(request: Request) -> bool:
    """On a loopback listener: a request whose Host names another machine. A web page whose domain
    name was re-pointed at 127.0.0.1 (DNS rebinding) sends its own name there, and must not read
    the tag values of /status or the metrics from the line PC's browser. Browsers always send a
    Host; a probe without one (an HTTP/1.0 health check) is answered."""
    host = request.headers.get("host")
    return host is not None and not host_is_loopback(host)


async def _route(agent: Agent, console: Console | None, request: Request, loopback: bool) -> Response:
    path = request.path
    if loopback and not (console is not None and console.serves(path)) and misaddressed(request):
        return Response(403, "text/plain; charset=utf-8", WRONG_HOST)  # the console has its own door
    if path.startswith("/metrics"):
        return Response(200, CONTENT_TYPE_LATEST, generate_latest(agent.metrics.registry))
    if path.startswith("/status"):
        return Response(200, "application/json", json.dumps(await status_document(agent)).encode())
    if path.startswith("/healthz"):
        health = await assess(agent)
        body = json.dumps({"healthy": health.healthy, "problems": health.problems,
                           "queue_depth": health.depth, "oldest_pending_seconds": health.oldest_pending,
                           "connections_up": health.connections_up,
                           "connections": health.connections}).encode()
        return Response(200 if health.healthy else 503, "application/json", body)
    if console is not None and console.serves(path):
        try:
            return await console.handle(request)
        except StorageError as exc:
            text = f"the database cannot be read: {exc}\n"
            return Response(503, "text/plain; charset=utf-8", text.encode())
    return Response(404, "text/plain", b"not found: try /metrics or /healthz\n")


async def _handle(agent: Agent, console: Console | None, loopback: bool, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    try:
        response = await _route(agent, console, await read_request(reader), loopback)
        reason = REASONS.get(response.status, "OK")
        head = f"HTTP/1.1 {response.status} {reason}\r\nContent-Type: {response.ctype}\r\n" \
               f"Content-Length: {len(response.body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in response.headers.items())
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + response.body)
        await writer.drain()
    except (TimeoutError, ConnectionError, UnicodeError, ValueError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve_http(agent: Agent, listen: str, console: Console | None = None) -> asyncio.Server:
    """/metrics, /healthz and /status; with `console`, the browser console at / and /api/status."""
    host, _, port = listen.rpartition(":")
    loopback = is_loopback(listen)
    return await asyncio.start_server(lambda r, w: _handle(agent, console, loopback, r, w), host.strip("[]"),
                                      int(port))


async def supervise(agent: Agent, notifier: Notifier) -> None:
    """Refresh gauges and STATUS=; ping the watchdog only while the pipeline commits on time."""
    interval = notifier.watchdog_interval()
    period = min(STATUS_EVERY, interval) if interval else STATUS_EVERY
    while True:
        try:
            health = await assess(agent)
            alert = f"; ALERT: {'; '.join(health.problems)}" if health.problems else ""
            notifier.notify(f"STATUS=connections up {health.connections_up}/{health.connections}, "
                            f"queued calls {health.depth}, oldest {health.oldest_pending:.0f}s{alert}")
        except Exception as exc:  # the supervisor must outlive a failing status read
            log.debug("status refresh failed: %s", exc)
        # The watchdog only asks whether the event loop and the pipeline go round: a database
        # that refuses writes is an alert (STATUS, /healthz), not a reason to be restarted.
        pipeline = agent.pipeline
        stalled = pipeline is not None and time.monotonic() - pipeline.last_cycle > 30.0
        if interval and not stalled:
            notifier.notify("WATCHDOG=1")
        await asyncio.sleep(period)
