"""The console's HTTP side: request parsing, the static page, `/api/status`, login, and the recorder task."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from agent.outbox.types import StorageError
from agent.runtime.console.auth import Gate
from agent.runtime.console.history import SAMPLE_EVERY, History
from agent.runtime.console.snapshot import build
from agent.runtime.service import Agent

log = logging.getLogger(__name__)

MAX_HEADERS = 64
MAX_BODY = 4096  # a login form; nothing else is posted
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/console.js": ("console.js", "text/javascript; charset=utf-8"),
          "/console.css": ("console.css", "text/css; charset=utf-8"),
          "/login": ("login.html", "text/html; charset=utf-8"),
          "/login.js": ("login.js", "text/javascript; charset=utf-8")}
PUBLIC = ("/login.js", "/console.css")
# The page loads nothing but its own files and runs no inline script: a value that slipped
# into the markup could still not execute.
SECURITY = {"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                                       "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                                       "form-action 'self'; base-uri 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store"}
OFF = (b"The console is off on this listener: it can be reached from other machines, so it needs a "
       b"token. Set PRODSMART_EDGE_CONSOLE_TOKEN (at least 16 characters) in the environment, the env "
       b"file or a systemd credential, or listen on 127.0.0.1.\n")
WRONG_HOST = b"This listener answers requests addressed to this machine only (127.0.0.1, localhost, ::1).\n"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    status: int
    ctype: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


async def read_request(reader: asyncio.StreamReader, timeout: float = 5.0) -> Request:  # noqa: ASYNC109
    """One HTTP/1.x request (headers lower-cased, a small body), read within `timeout` seconds in
    all: a client dripping its headers cannot hold the connection. Raises ValueError if malformed,
    TimeoutError if too slow. (asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the
    cancellation that stops the listener.)"""
    async with asyncio.timeout(timeout):
        line = (await reader.readline()).decode("latin-1")
        parts = line.split()
        if len(parts) < 2:
            raise ValueError("not an HTTP request")
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if not 0 <= length <= MAX_BODY:
            raise ValueError("body too large")
        body = await reader.readexactly(length) if length else b""
    url = urlsplit(parts[1])
    return Request(parts[0].upper(), url.path or "/", parse_qs(url.query), headers, body)


@functools.cache
def _static(name: str) -> bytes:
    return resources.files("agent.runtime.console").joinpath("static", name).read_bytes()


class Console:
    """The browser console of one agent: its door, its history, and the pages it serves."""

    def __init__(self, agent: Agent, listen: str, token: str | None) -> None:
        self.agent = agent
        self.gate = Gate(listen, token)
        self.history = History()
        self.started = time.time()
        self._seeded = False
        self._failed = False
        # Belt and braces: should a secret ever slip into a value (an error text, an answer),
        # it is blanked out of the JSON like the log redacts it.
        known = (agent.credentials.api_key, agent.credentials.api_secret, token)
        self._secrets = [json.dumps(s)[1:-1] for s in known if s and len(s) >= 8]
        if self.gate.mode == "off":
            why = "is shorter than 16 characters" if self.gate.weak_token else "is not set"
            log.warning("The browser console is off on %s: a listener other machines can reach needs "
                        "PRODSMART_EDGE_CONSOLE_TOKEN (at least 16 characters), and it %s", listen, why)

    def serves(self, path: str) -> bool:
        return path in STATIC or path.startswith("/api/")

    async def record(self) -> None:
        """Sample the history until cancelled (a few dictionary look-ups per machine)."""
        agent = self.agent
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            pipeline, uplink = agent.pipeline, agent.uplink
            if pipeline is None or uplink is None:
                continue
            if not self._seeded and agent.outbox is not None:
                self.history.seed = await self._acked()
                self._seeded = True
            try:
                self.history.sample(time.time(), pipeline.logic.glance(), uplink.journal.delivered,
                                    uplink.journal.sent)
            except Exception:  # a chart's bug must never take the agent down: said once, then quiet
                if not self._failed:
                    log.exception("The console's history could not be sampled (the agent goes on)")
                self._failed = True

    async def _acked(self) -> dict[str, int]:
        assert self.agent.outbox is not None
        try:
            stats = await self.agent.outbox.stats(time.time())
        except StorageError:  # the seed is only the counts chart's starting point
            return {}
        # Prodsmart holds the acknowledged count; a machine never acknowledged holds its offset.
        return {s.machine: s.acked_count if s.acked_count is not None else s.offset for s in stats}

    async def handle(self, request: Request) -> Response:
        if self.gate.mode == "off":
            return Response(403, "text/plain; charset=utf-8", OFF)
        if request.path == "/login":
            return await self._login(request)
        if request.path in PUBLIC:  # what the sign-in form needs; nothing from the agent in them
            name, ctype = STATIC[request.path]
            return Response(200, ctype, _static(name), SECURITY)
        if not self.gate.allows(request.headers):
            if self.gate.mode == "open":
                return Response(403, "text/plain; charset=utf-8", WRONG_HOST)
            if request.path.startswith("/api/"):
                return Response(401, "application/json", b'{"error": "a console token is needed"}',
                                {"WWW-Authenticate": 'Bearer realm="prodsmart-edge console"'})
            return Response(303, "text/plain", b"see /login\n", {"Location": "/login"})
        if request.path == "/api/status":
            machine = request.query.get("machine", [None])[0]
            data = await build(self.agent, self.history, self.started, machine)
            text = json.dumps(data, allow_nan=False)
            for secret in self._secrets:
                text = text.replace(secret, "***")
            return Response(200, "application/json", text.encode(), SECURITY)
        if request.path in STATIC and request.method == "GET":
            name, ctype = STATIC[request.path]
            return Response(200, ctype, _static(name), SECURITY)
        return Response(404, "text/plain", b"not found\n")

    async def _login(self, request: Request) -> Response:
        if request.method != "POST":
            name, ctype = STATIC["/login"]
            return Response(200, ctype, _static(name), SECURITY)
        offered = parse_qs(request.body.decode("utf-8", "replace")).get("token", [""])[0]
        if self.gate.token_matches(offered):
            return Response(303, "text/plain", b"see /\n",
                            {"Location": "/", "Set-Cookie": self.gate.session_cookie()})
        await asyncio.sleep(1.0)  # slows guessing down; the comparison itself is constant-time
        return Response(303, "text/plain", b"wrong token\n", {"Location": "/login?wrong=1"})
