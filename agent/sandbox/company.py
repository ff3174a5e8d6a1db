"""One Prodsmart company: a request goes through faults, rate limit, auth and rules to an Outcome.

The company may have several API keys (`SandboxOptions.clients`: other agents, other line PCs),
each with its own access tokens; the rate limit counts every request of every key, plus the
simulated other integrations (`other_integrations_per_minute`)."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

from agent.sandbox import calls
from agent.sandbox.book import Book, Ledger, Record
from agent.sandbox.calls import Refused
from agent.sandbox.control import Control
from agent.sandbox.faults import FaultBook
from agent.sandbox.limits import RateWindow, TokenStore, too_many
from agent.sandbox.options import Fault, SandboxOptions
from agent.sandbox.resources import list_downtimes
from agent.sandbox.wire import Outcome, Request, json_outcome, text_outcome

MACHINE_ENDPOINTS = ("counter", "startstop", "parameters")


class Company:
    """Thread-safe: every request is processed under one lock, so the ledger is always consistent."""

    def __init__(self, options: SandboxOptions) -> None:
        self._lock = threading.Lock()
        self.options = options
        self._book = Book()
        self._faults = FaultBook()
        self._tokens: dict[str, TokenStore] = {}  # per API key
        self._window = RateWindow()
        self._seq = 0
        self.control = Control(self)

    # -- used by the Sandbox and the control endpoints ------------------------------------------
    def ledger(self) -> Ledger:
        with self._lock:
            return replace(self._book.snapshot(), other_integrations=dict(self._window.others))

    def inject(self, fault: Fault) -> None:
        with self._lock:
            self._faults.inject(fault, time.monotonic())

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[Fault]:
        with self._lock:
            return self._faults.active(time.monotonic())

    def set_options(self, changes: dict[str, Any]) -> SandboxOptions:
        with self._lock:
            self.options = self.options.updated(changes)
            return self.options

    def reset(self) -> None:
        """Forget every call, token, fault and the rate window; the options stay."""
        with self._lock:
            self._book = Book()
            self._faults.clear()
            self._tokens.clear()
            self._window.clear()
            self._seq = 0

    # -- the API ------------------------------------------------------------------------------
    def handle(self, request: Request) -> Outcome:
        if request.path.startswith("/_sandbox/"):
            return self.control.handle(request)
        with self._lock:
            return self._handle(request)

    def _handle(self, request: Request) -> Outcome:
        self._seq += 1
        endpoint, machine = self._route(request.path)
        entry: Record = {"seq": self._seq, "time": time.time(), "machine": machine,
                         "endpoint": endpoint, "body": _loose_json(request.body)}
        fault = self._faults.hit(endpoint, machine, time.monotonic()) if endpoint else None
        entry["fault"] = fault.kind if fault is not None else None
        if fault is not None and _before(fault):
            outcome = self._pre_fault(fault, entry)
        else:
            outcome = self._process(request, endpoint, machine, entry)
            if fault is not None:
                outcome = self._post_fault(fault, entry, outcome)
        self._book.status("dropped" if outcome.drop else outcome.status)
        if endpoint == "authorization":
            self._book.ledger.authorizations.append({"seq": entry["seq"], "time": entry["time"],
                                                     "method": request.method,
                                                     "status": None if outcome.drop else outcome.status})
        return outcome

    def _pre_fault(self, fault: Fault, entry: Record) -> Outcome:
        """A fault that hits before the request reaches Prodsmart: nothing is applied or counted."""
        self._book.faulted(entry, fault.kind, applied=False)
        if fault.kind in ("drop_before", "outage"):
            return Outcome(drop=True)
        if fault.kind == "rate_limit":
            exc = too_many(fault.retry_after, self.options.retry_after_format, "injected fault: rate limit")
        elif fault.kind == "timeout":
            exc = Refused(504, "injected fault: timeout, the call was not applied")
        else:
            exc = Refused(fault.status, f"injected fault: status {fault.status}")
        self._book.reject(entry, exc.status, exc.reason)
        return replace(self._error(exc), hold=fault.delay if fault.kind == "timeout" else 0.0)

    def _post_fault(self, fault: Fault, entry: Record, outcome: Outcome) -> Outcome:
        """A fault that hits after the call was processed (and applied, if it was valid)."""
        self._book.faulted(entry, fault.kind, applied=outcome.status < 300)
        if fault.kind == "drop_after":
            return Outcome(drop=True)
        return replace(outcome, hold=fault.delay)

    def _process(self, request: Request, endpoint: str | None, machine: str | None, entry: Record) -> Outcome:
        try:
            if endpoint is None:
                raise Refused(404, f"no such resource: {request.method} {request.path}")
            self._admit()
            if endpoint == "authorization":
                return self._authorization(request)
            if endpoint == "downtimes":
                self._method(request, "GET")
                self._token(request)
                return json_outcome(200, list_downtimes(self._book.ledger.downtimes, request.query))
            assert machine is not None
            return json_outcome(200, self._machine_call(request, endpoint, machine, entry))
        except Refused as exc:
            self._book.reject(entry, exc.status, exc.reason)
            return self._error(exc)

    def _admit(self) -> None:
        limit = self.options.requests_per_minute
        wait = self._window.admit(limit, time.monotonic(), self.options.other_integrations_per_minute)
        if wait is not None:
            raise too_many(wait, self.options.retry_after_format,
                           f"rate limit of {limit} requests per minute reached; retry later")

    def _machine_call(self, request: Request, endpoint: str, machine: str, entry: Record) -> Record:
        self._method(request, "POST")
        entry["auth"], entry["client"] = self._machine_auth(request)
        if self.options.types_of(machine) is None:
            raise Refused(404, f"machine {machine} does not exist")
        body = calls.decode_json(request.headers.get("content-type"), request.body)
        if endpoint == "counter":
            counter = calls.parse_counter(body, self.options.waste_requires_count)
            return self._book.counter(machine, counter, self.options, entry)
        if endpoint == "parameters":
            return self._book.parameters(machine, calls.parse_parameters(body), entry)
        return self._book.startstop(machine, calls.parse_startstop(body), self.options, entry)

    def _authorization(self, request: Request) -> Outcome:
        self._method(request, "GET", "POST", "DELETE")
        key = self._basic(request)
        if key is None:
            raise _unauthorized("/authorization takes the API key and secret as HTTP Basic authentication")
        tokens = self._tokens.setdefault(key, TokenStore())
        now = time.monotonic()
        if request.method == "DELETE":
            tokens.delete()
            return Outcome(204, content_type="")
        if request.method == "POST":
            scopes = calls.parse_scopes(calls.decode_json(request.headers.get("content-type"), request.body))
            token = tokens.create(scopes, self.options.token_ttl, now, self.options.post_replaces_token)
            status = 201
        else:
            found = tokens.current(now)
            if found is None:
                raise Refused(404, "no access token exists; POST /authorization creates one")
            token, status = found, 200
        links = {"self": {"href": f"{self.options.paths_prefix}/authorization"}}
        return json_outcome(status, {"scopes": list(token.scopes), "token": token.value, "_links": links})

    def _machine_auth(self, request: Request) -> tuple[str, str]:
        """("basic" | "token", the API key) of a machine call, or Refused."""
        if "access_token" in request.query:
            return "token", self._token(request)
        key = self._basic(request)
        if key is not None:
            return "basic", key
        if "authorization" in request.headers:
            raise _unauthorized("wrong API key or secret")
        raise _unauthorized("authentication required: HTTP Basic API key and secret, or ?access_token=")

    def _token(self, request: Request) -> str:
        """The API key whose valid access token the request carries, or Refused."""
        values = request.query.get("access_token", [])
        if len(values) != 1 or not values[0]:
            raise _unauthorized("an access_token query parameter is required")
        key, owner = next(((k, s) for k, s in self._tokens.items() if s.holds(values[0])), ("", TokenStore()))
        token = owner.check(values[0], time.monotonic())
        if "productions_write" not in token.scopes:
            raise Refused(403, "the access token lacks the productions_write scope")
        return key

    def _basic(self, request: Request) -> str | None:
        """The API key of valid HTTP Basic credentials of this company, else None."""
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            key, sep, secret = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        expected = self.options.secret_of(key)
        if not sep or expected is None or not secrets.compare_digest(secret, expected):
            return None
        return key

    @staticmethod
    def _method(request: Request, *allowed: str) -> None:
        if request.method not in allowed:
            raise Refused(405, f"{request.method} is not allowed here", (("Allow", ", ".join(allowed)),))

    def _route(self, path: str) -> tuple[str | None, str | None]:
        """(endpoint, machine code) of an API path; (None, None) when there is no such resource."""
        prefix = self.options.paths_prefix
        if path in (f"{prefix}/authorization", f"{prefix}/downtimes"):
            return path.rsplit("/", 1)[1], None
        parts = path.split("/")
        head = prefix.split("/")
        if len(parts) == len(head) + 3 and parts[: len(head)] == head and parts[len(head)] == "machines":
            code, endpoint = unquote(parts[-2]), parts[-1]
            if code and endpoint in MACHINE_ENDPOINTS:
                return endpoint, code
        return None, None

    def _error(self, exc: Refused) -> Outcome:
        if self.options.error_format == "json":
            return replace(json_outcome(exc.status, {"error": exc.reason}), headers=exc.headers)
        return replace(text_outcome(exc.status, exc.reason), headers=exc.headers)


def _before(fault: Fault) -> bool:
    """Whether the fault hits before the call reaches Prodsmart (so it is never applied)."""
    return fault.kind not in ("drop_after", "timeout") or (fault.kind == "timeout" and not fault.apply)


def _unauthorized(reason: str) -> Refused:
    return Refused(401, reason, (("WWW-Authenticate", 'Basic realm="Prodsmart"'),))


def _loose_json(raw: bytes) -> Any:
    """The body as the ledger shows it: parsed JSON when it is JSON, else the text."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
