"""Values and pure helpers shared by `agent.outbox.store` and its base classes: calls, errors, JSON."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite

from agent.core.errors import PlainError
from agent.core.metrics import Metrics
from agent.outbox.coalesce import Acked, Kind, Lane, counter_body, startstop_body


class OutboxBase:
    """What `agent.outbox.store.Outbox` provides to its base classes (delivery, admin, lanes): declared here
    once, for the type checker only, so those modules can use Outbox's transactions and helpers."""

    if TYPE_CHECKING:
        _hold: bool
        _metrics: Metrics | None
        _warned: set[str]

        def _read(self) -> AbstractAsyncContextManager[aiosqlite.Connection]: ...

        def _tx(self) -> AbstractAsyncContextManager[aiosqlite.Connection]: ...

        async def _machine_info(
            self, db: aiosqlite.Connection, names: str
        ) -> tuple[dict[str, int], dict[str, Acked]]: ...

        async def _waste_offsets(
            self, db: aiosqlite.Connection, names: str
        ) -> dict[str, dict[str, int]]: ...

        async def _waste_of(
            self, db: aiosqlite.Connection, table: str, names: str
        ) -> dict[str, dict[str, int]]: ...

        async def _write_lanes(self, db: aiosqlite.Connection, lanes: list[Lane], now: float) -> None: ...

        async def _upsert_params(
            self, db: aiosqlite.Connection, params: Mapping[tuple[str, str], str], now: float
        ) -> None: ...

        async def _set_held(
            self, db: aiosqlite.Connection, machine: str, held: Mapping[str, int]
        ) -> None: ...

        def _log_dropped(self, machine: str, dropped: list[str]) -> None: ...


class StorageError(PlainError):
    """The database cannot be used; the message says why in one sentence, then the SQLite detail."""


@dataclass(frozen=True, slots=True)
class Head:
    """The next call of one machine's lane (`id` 0: a parameters call built from pending values).

    `created`: when the head call was queued (wall clock); `oldest`: when the machine's oldest part
    that Prodsmart does not have yet was counted (its oldest queued counter call), None if none.
    """

    machine: str
    kind: Kind
    id: int
    created: float = 0.0
    oldest: float | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """A call to send. `attempts` counts this one; `unknown`: an earlier attempt's outcome is unknown,
    so Prodsmart may already have applied it."""

    id: int
    machine: str
    kind: Kind
    body: Mapping[str, Any]
    attempts: int = 0
    unknown: bool = False
    param_seq: int = 0
    created: float = 0.0


def _explain(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if "FULL" in name or "full" in text:
        return "the disk is full"
    if "READONLY" in name or "readonly" in text or "read-only" in text:
        return "it is read-only"
    if "NOTADB" in name or "CORRUPT" in name or "not a database" in text or "malformed" in text:
        return "it is not a database or it is damaged (corrupt?)"
    if "BUSY" in name or "LOCKED" in name or "locked" in text:
        return "another process keeps it locked"
    if "IOERR" in name:
        return "the disk reported an input/output error"
    if "CANTOPEN" in name:
        return "the file cannot be opened"
    return "the database failed"


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # built once: a commit encodes many


def _j(value: Any) -> str:
    return _ENCODER.encode(value)


def _param_value(value: Any) -> str | None:
    """JSON of a parameter value, or None if Prodsmart cannot take it (numbers or strings only)."""
    if isinstance(value, bool):
        return _j(int(value))  # Prodsmart documents numbers and strings, not booleans
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (int, float, str)):
        return _j(value)
    return None


def _call_of(r: Any) -> Call:
    if r[7] is not None:
        body: dict[str, Any] = json.loads(r[7])
    elif r[2] == "startstop":
        body = startstop_body(bool(r[5]), str(r[6]))
    else:
        body = counter_body(r[3], json.loads(r[4]) if r[4] else {})
    return Call(int(r[0]), str(r[1]), r[2], body, int(r[8]), bool(r[9] or r[10]), int(r[11]), float(r[12]))
