"""A strict in-process Prodsmart double for `httpx.MockTransport`: the rules the uplink relies on."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx

APPLIED_THEN_TIMEOUT = "applied-then-timeout"  # the call is applied, the answer never arrives
Action = httpx.Response | Exception | str


@dataclass
class Seen:
    time: float
    method: str
    path: str
    machine: str | None
    endpoint: str | None
    body: Any
    status: int | None = None


@dataclass
class FakeProdsmart:
    """Strictly increasing counts and waste per machine, HTTP Basic or access tokens, scripted faults.

    `fail(machine, *actions)` queues what the next requests of that machine get instead of the
    normal treatment: a Response (not applied), an exception (raised, not applied) or
    APPLIED_THEN_TIMEOUT.
    """

    api_key: str = "key"
    api_secret: str = "secret"
    accept_credentials: bool = True
    delay: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    waste: dict[tuple[str, str], int] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    applied: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    issued: list[str] = field(default_factory=list)
    token_requests: list[str] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: int = 0
    max_in_flight_per_machine: int = 0
    _faults: dict[str, deque[Action]] = field(default_factory=dict)

    def fail(self, machine: str, *actions: Action) -> None:
        self._faults.setdefault(machine, deque()).extend(actions)

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def requests_for(self, machine: str) -> list[Seen]:
        return [s for s in self.seen if s.machine == machine]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = request.url.raw_path.decode("ascii").split("?")[0]  # still percent-encoded
        parts = path.split("/")
        machine = unquote(parts[3]) if len(parts) == 5 and parts[2] == "machines" else None
        endpoint = parts[4] if machine is not None else parts[-1]
        seen = Seen(time.monotonic(), request.method, path, machine, endpoint, body)
        self.seen.append(seen)
        response = await self._timed(request, machine, endpoint, body)
        seen.status = response.status_code
        return response

    async def _timed(self, request: httpx.Request, machine: str | None, endpoint: str,
                     body: Any) -> httpx.Response:
        key = machine or "-"
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        self.max_in_flight = max(self.max_in_flight, sum(self.in_flight.values()))
        if machine is not None:
            self.max_in_flight_per_machine = max(self.max_in_flight_per_machine, self.in_flight[key])
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if endpoint == "authorization":
                return self._authorization(request)
            assert machine is not None, request.url
            return self._machine(request, machine, endpoint, body)
        finally:
            self.in_flight[key] -= 1

    def _basic_ok(self, request: httpx.Request) -> bool:
        expected = base64.b64encode(f"{self.api_key}:{self.api_secret}".encode()).decode()
        return self.accept_credentials and request.headers.get("Authorization") == f"Basic {expected}"

    def _authorization(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request.method)
        if not self._basic_ok(request):
            return httpx.Response(401, text="wrong API key or secret")
        if request.method == "DELETE":
            self.tokens.clear()
            return httpx.Response(204)
        if request.method == "POST":
            assert json.loads(request.content) == {"scopes": ["productions_write"]}
            token = secrets.token_hex(8)
            self.tokens = {token}
            self.issued.append(token)
            return httpx.Response(201, json={"scopes": ["productions_write"], "token": token, "_links": {}})
        if not self.tokens:
            return httpx.Response(404, text="no access token; POST creates one")
        return httpx.Response(200, json={"scopes": ["productions_write"], "token": next(iter(self.tokens))})

    def _machine(self, request: httpx.Request, machine: str, endpoint: str, body: Any) -> httpx.Response:
        token = request.url.params.get("access_token")
        if not (token in self.tokens if token is not None else self._basic_ok(request)):
            return httpx.Response(401, text="authentication required")
        faults = self._faults.get(machine)
        action = faults.popleft() if faults else None
        if isinstance(action, httpx.Response):
            return action
        if isinstance(action, Exception):
            raise action
        response = self._apply(machine, endpoint, body)
        if action == APPLIED_THEN_TIMEOUT and response.status_code == 200:
            raise httpx.ReadTimeout("timed out", request=request)
        return response

    def _apply(self, machine: str, endpoint: str, body: dict[str, Any]) -> httpx.Response:
        if endpoint == "counter":
            problems = self._not_increasing(machine, body)
            if problems:
                return httpx.Response(400, text="; ".join(problems))
            if "count" in body:
                self.counts[machine] = body["count"]
            for w in body.get("waste", []):
                self.waste[(machine, w["code"])] = w["quantity"]
            for p in body.get("parameters", []):
                self.parameters.setdefault(machine, {})[p["name"]] = p["value"]
        elif endpoint == "startstop":
            if set(body) != {"type", "running"} or body["running"] not in (0, 1):
                return httpx.Response(400, text="type and running 0|1 required")
            self.running[machine] = body["running"]
        elif endpoint == "parameters":
            for p in body["parameters"]:
                assert set(p) == {"code", "value"}
                self.parameters.setdefault(machine, {})[p["code"]] = p["value"]
        else:
            return httpx.Response(404, text="no such endpoint")
        self.applied.append((machine, endpoint, body))
        return httpx.Response(200, json={"count": self.counts.get(machine)})

    def _not_increasing(self, machine: str, body: dict[str, Any]) -> list[str]:
        problems = []
        last_count = self.counts.get(machine)
        if "count" in body and last_count is not None and body["count"] <= last_count:
            problems.append(f"count {body['count']} is not greater than the last count {last_count}")
        for w in body.get("waste", []):
            last = self.waste.get((machine, w["code"]))
            if last is not None and w["quantity"] <= last:
                problems.append(f"waste {w['code']} quantity must be greater than the previous value {last}")
        return problems
