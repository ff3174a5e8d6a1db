"""The /_sandbox/ endpoints: ledger, faults, options and reset, exempt from auth, limits and faults."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from agent.sandbox.book import Ledger
from agent.sandbox.options import Fault, SandboxOptions
from agent.sandbox.wire import Outcome, Request, json_outcome, text_outcome


class Controlled(Protocol):
    """What the control endpoints act on (the sandbox's company)."""

    options: SandboxOptions

    def ledger(self) -> Ledger: ...
    def inject(self, fault: Fault) -> None: ...
    def clear_faults(self) -> None: ...
    def faults(self) -> list[Fault]: ...
    def set_options(self, changes: dict[str, Any]) -> SandboxOptions: ...
    def reset(self) -> None: ...


class Control:
    def __init__(self, company: Controlled) -> None:
        self._company = company

    def handle(self, request: Request) -> Outcome:
        routes: dict[tuple[str, str], Callable[[Any], Any]] = {
            ("GET", "/_sandbox/ledger"): lambda _: self._company.ledger().to_json(),
            ("GET", "/_sandbox/faults"): lambda _: self._faults(),
            ("POST", "/_sandbox/faults"): self._inject,
            ("DELETE", "/_sandbox/faults"): lambda _: self._company.clear_faults(),
            ("GET", "/_sandbox/options"): lambda _: self._company.options.to_json(),
            ("POST", "/_sandbox/options"): lambda body: self._company.set_options(body).to_json(),
            ("POST", "/_sandbox/reset"): lambda _: self._company.reset(),
        }
        route = routes.get((request.method, request.path))
        if route is None:
            return text_outcome(404, f"no control endpoint {request.method} {request.path}")
        try:
            result = route(_body(request.body))
        except (ValueError, TypeError) as exc:
            return text_outcome(400, str(exc))
        return Outcome(204, content_type="") if result is None else json_outcome(200, result)

    def _faults(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self._company.faults()]

    def _inject(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object describing a Fault")
        self._company.inject(Fault.from_json(body))
        return {"faults": self._faults()}


def _body(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from None
