"""The sandbox's settings and injectable faults, with their JSON forms."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

DEFAULT_TYPES = ("Stopped", "Unplanned stop", "Maintenance", "Material shortage", "No production")
FAULT_KINDS = ("status", "timeout", "drop_before", "drop_after", "rate_limit", "outage")
ENDPOINTS = ("counter", "startstop", "parameters", "authorization", "downtimes")
_CHOICES = {
    "repeat_count": ("reject", "ignore"),
    "repeat_running": ("accept", "reject"),
    "retry_after_format": ("seconds", "http-date"),
    "error_format": ("text", "json"),
}


@dataclass
class SandboxOptions:
    """How strict the sandbox is; the fields marked "undocumented" cover what Prodsmart leaves open.

    machines: machine code -> downtime types assigned to it; None accepts any machine with
        DEFAULT_TYPES.
    requests_per_minute: per company, sliding 60 s window over every API request; 0 = no limit.
    clients: further API key -> secret pairs of the same company (other agents, other line PCs),
        each with its own access tokens; every request of every key counts against the one limit.
    other_integrations_per_minute: requests the company's other integrations send, evenly
        spaced, taking part of the limit (refused, not counted, when the window is full).
    repeat_count (undocumented): "reject" (400) or "ignore" (200, no change) a count or waste
        quantity equal to the last one. A smaller one is always rejected.
    waste_requires_count (undocumented): reject a counter call that carries waste but no count.
    repeat_running (undocumented): "accept" (200, state kept, recorded as a repeat) or "reject"
        (400) a startstop call for a machine already in that state.
    post_replaces_token (undocumented): a POST /authorization revokes the previous token.
    error_format (undocumented): error bodies as plain "text" or JSON {"error": "..."}.
    """

    api_key: str = "sandbox-key"
    api_secret: str = "sandbox-secret"
    machines: dict[str, list[str]] | None = None
    requests_per_minute: int = 120
    clients: dict[str, str] | None = None
    other_integrations_per_minute: float = 0.0
    retry_after_format: str = "seconds"
    token_ttl: float = 7200.0
    repeat_count: str = "reject"
    waste_requires_count: bool = False
    repeat_running: str = "accept"
    post_replaces_token: bool = True
    error_format: str = "text"
    paths_prefix: str = "/api"

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.requests_per_minute < 0:
            raise ValueError("requests_per_minute must be >= 0 (0 = no limit)")
        others = self.other_integrations_per_minute
        if not (math.isfinite(others) and others >= 0):
            raise ValueError("other_integrations_per_minute must be a finite number >= 0")
        if not self.token_ttl > 0:
            raise ValueError("token_ttl must be > 0")
        if not self.paths_prefix.startswith("/") or self.paths_prefix.endswith("/"):
            raise ValueError("paths_prefix must start with '/' and not end with it, e.g. '/api'")

    def secret_of(self, api_key: str) -> str | None:
        """The secret of one of the company's API keys, or None if it has no such key."""
        if api_key == self.api_key:
            return self.api_secret
        return (self.clients or {}).get(api_key)

    def types_of(self, machine: str) -> list[str] | None:
        """The downtime types of a machine, or None when the machine does not exist."""
        if self.machines is None:
            return list(DEFAULT_TYPES)
        return self.machines.get(machine)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, changes: dict[str, Any]) -> SandboxOptions:
        """A copy with `changes` applied; unknown names raise ValueError."""
        return dataclasses.replace(self, **_known(SandboxOptions, changes))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxOptions:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class Fault:
    """A misbehaviour to inject into the next matching API requests (never control endpoints).

    kind: "status" answers `status` without applying; "timeout" holds the answer `delay`
        seconds (applied first when `apply`, else answered 504 without applying);
        "drop_before" closes the connection without applying; "drop_after" applies, then
        closes without answering; "rate_limit" answers 429 with Retry-After `retry_after`;
        "outage" closes every request while it lasts.
    count: how many requests it hits; -1 = all until cleared. Default: 1, or -1 with `seconds`.
    seconds: active for this long after injection.
    probability: chance that a matching request is hit, drawn from Random(seed).
    endpoint, machine: hit only requests of this endpoint / machine.
    """

    kind: str
    status: int = 503
    delay: float = 1.0
    apply: bool = False
    retry_after: float = 1.0
    count: int | None = None
    seconds: float | None = None
    probability: float = 1.0
    seed: int = 0
    endpoint: str | None = None
    machine: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, not {self.kind!r}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within 0..1")
        if self.endpoint is not None and self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}, not {self.endpoint!r}")
        if not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")
        if self.count is not None and (self.count == 0 or self.count < -1):
            raise ValueError("count must be >= 1, or -1 for every request until cleared")
        for name in ("delay", "retry_after", "seconds"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0")

    @property
    def hits(self) -> int:
        """How many requests it hits (-1 = unlimited)."""
        if self.count is not None:
            return self.count
        return -1 if self.seconds is not None else 1

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        return cls(**_known(cls, data))


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return dict(data)
