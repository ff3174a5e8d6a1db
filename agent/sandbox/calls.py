"""Strict parsing of request bodies into the documented shapes; anything else is a 400."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

Value = int | float | str


class Refused(Exception):
    """A request answered with a 4xx: `status` and a human-readable `reason`."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass(frozen=True)
class CounterCall:
    count: int | None
    waste: tuple[tuple[str, int], ...]
    parameters: tuple[tuple[str, Value], ...]


@dataclass(frozen=True)
class ParametersCall:
    parameters: tuple[tuple[str, Value], ...]


@dataclass(frozen=True)
class StartStopCall:
    type: str
    running: int


def decode_json(content_type: str | None, raw: bytes) -> Any:
    """The JSON body, if the request declares application/json and the body really is JSON."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise Refused(400, f"Content-Type must be application/json, not {content_type or 'missing'!r}")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, f"the body is not valid JSON: {exc}") from None


def parse_counter(body: Any, waste_requires_count: bool) -> CounterCall:
    _object(body, "the counter body", {"count", "waste", "parameters"})
    count = _count(body["count"], "count") if "count" in body else None
    waste = _entries(body.get("waste", []), "waste", "code", "quantity")
    parameters = _entries(body.get("parameters", []), "parameters", "name", "value")
    if count is None and not waste:
        raise Refused(400, "a counter call needs a count or waste")
    if count is None and waste_requires_count:
        raise Refused(400, "count is required in every counter call")
    return CounterCall(count, tuple((k, _count(v, f"waste {k!r} quantity")) for k, v in waste),
                       tuple((k, _value(v, f"parameter {k!r}")) for k, v in parameters))


def parse_parameters(body: Any) -> ParametersCall:
    _object(body, "the parameters body", {"parameters"})
    if "parameters" not in body:
        raise Refused(400, "'parameters' is required")
    entries = _entries(body["parameters"], "parameters", "code", "value")
    if not entries:
        raise Refused(400, "'parameters' must not be empty")
    return ParametersCall(tuple((k, _value(v, f"parameter {k!r}")) for k, v in entries))


def parse_startstop(body: Any) -> StartStopCall:
    _object(body, "the startstop body", {"type", "running"})
    for name in ("type", "running"):
        if name not in body:
            raise Refused(400, f"{name!r} is required")
    kind, running = body["type"], body["running"]
    if not isinstance(kind, str) or not kind:
        raise Refused(400, f"'type' must be a non-empty string, not {kind!r}")
    # JSON true/false would pass `in (0, 1)` in Python; the API wants the numbers.
    if type(running) is not int or running not in (0, 1):
        raise Refused(400, f"'running' must be the number 0 or 1, not {json.dumps(running)}")
    return StartStopCall(kind, running)


def parse_scopes(body: Any) -> list[str]:
    _object(body, "the authorization body", {"scopes"})
    scopes = body.get("scopes")
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) and s for s in scopes):
        raise Refused(400, "'scopes' must be a non-empty list of strings, e.g. [\"productions_write\"]")
    return list(scopes)


def _object(body: Any, what: str, allowed: set[str]) -> None:
    if not isinstance(body, dict):
        raise Refused(400, f"{what} must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Refused(400, f"unknown field(s) in {what}: {', '.join(unknown)}")


def _entries(items: Any, what: str, key: str, value: str) -> list[tuple[str, Any]]:
    """[{key: str, value: ...}, ...] with unique keys, as (key, value) pairs."""
    if not isinstance(items, list):
        raise Refused(400, f"{what!r} must be a list")
    out: list[tuple[str, Any]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {key, value}:
            got = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise Refused(400, f"{what}[{i}] must be an object with exactly {key!r} and {value!r}, got {got}")
        name = item[key]
        if not isinstance(name, str) or not name:
            raise Refused(400, f"{what}[{i}].{key} must be a non-empty string")
        if any(name == seen for seen, _ in out):
            raise Refused(400, f"{what} lists {key} {name!r} twice")
        out.append((name, item[value]))
    return out


def _count(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise Refused(400, f"{what} must be an integer >= 0, not {json.dumps(value)}")
    return value


def _value(value: Any, what: str) -> Value:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Refused(400, f"{what} value must be a number or a string, not {json.dumps(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise Refused(400, f"{what} value must be finite")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
