"""The crash-safe SQLite outbox: machine logic state and the Prodsmart calls it produced, in one transaction.

The outbox package alone speaks SQL: this module (transactions, commits), `agent.outbox.delivery`
(the uplink's side), `agent.outbox.admin` (the operator's side: dead letters, rebase, inspection)
and `agent.outbox.lanes` (lane rows), whose methods `Outbox` inherits; `agent.outbox.opening`
(who opens the database, and how), `agent.outbox.schema` (migrations), `agent.outbox.dedupe`
(delta message ids). The values they share (`Call`, `Head`, `StorageError`) live in
`agent.outbox.types`.

One lane per machine: a strict FIFO of counter and startstop calls (coalesced by `agent.outbox.coalesce`),
plus pending parameter values (newest per code) that ride on the next counter call or go to the
parameters endpoint when the lane is idle.

The uplink drives delivery through `heads()` -> `begin_attempt()` -> `ack()` /
`attempt_failed()` / `dead_letter()`. `begin_attempt` marks the call attempted and in flight
*before* it is sent, so a crash while sending leaves it queued with an unknown outcome.

Errors: every database failure (read-only, disk full, not a database, locked) is raised as
`StorageError` carrying one plain sentence, then the SQLite detail; never a silent loss.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

from agent.core.metrics import Metrics
from agent.core.model import CounterChanged, Event, ParametersChanged, RunStateChanged
from agent.outbox.admin import DeadLetter as DeadLetter
from agent.outbox.admin import MachineStats as MachineStats
from agent.outbox.admin import OutboxAdmin
from agent.outbox.dedupe import DeltaId, attach_ids, store_ids
from agent.outbox.delivery import RESPONSE_LIMIT as RESPONSE_LIMIT
from agent.outbox.delivery import OutboxDelivery
from agent.outbox.inthread import run_transaction
from agent.outbox.lanes import OutboxLanes
from agent.outbox.opening import ACCESS, Access, connect, discard_snapshot, open_error, prepare, snapshot
from agent.outbox.types import Call as Call
from agent.outbox.types import Head as Head
from agent.outbox.types import StorageError as StorageError
from agent.outbox.types import _explain, _j, _param_value

log = logging.getLogger(__name__)

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class Outbox(OutboxDelivery, OutboxAdmin, OutboxLanes):
    """The agent's database; build it with `await Outbox.open(path)` and `close()` it."""

    def __init__(
        self, db: aiosqlite.Connection, path: str, *, max_bytes: int, hold: bool, metrics: Metrics | None
    ) -> None:
        self._db: aiosqlite.Connection | None = db
        self.path = path
        self._max_bytes = max_bytes
        self._hold = hold
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._dirty = False  # a transaction was cancelled half-way: roll it back first
        self._over_bound = False
        self._warned: set[str] = set()
        self._scratch: str | None = None  # a dry run's private copy, deleted on close
        self._synchronous = "NORMAL"

    # ------------------------------------------------------------------ opening

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        synchronous: str = "NORMAL",
        max_size_mb: float = 256,
        metrics: Metrics | None = None,
        waste_without_count: str = "send",
        access: Access = "agent",
    ) -> Outbox:
        """Open (or create) the database; the directory must exist. Raises `StorageError`.

        `access` says who opens it (see `agent.outbox.opening`): the agent, an operator's
        command beside it, a read-only reader, or a dry run's private copy."""
        if synchronous.upper() not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
        if waste_without_count not in ("send", "hold"):
            raise ValueError("waste_without_count must be 'send' or 'hold'")
        if access not in ACCESS:
            raise ValueError(f"access must be one of {', '.join(ACCESS)}")
        real = path
        if access == "copy":
            path = await asyncio.to_thread(snapshot, real)
        try:
            db = await connect(path, access, metrics)
        except BaseException:
            if access == "copy":
                discard_snapshot(path)
            raise
        box = cls(db, path, max_bytes=int(max_size_mb * 1024 * 1024),
                  hold=waste_without_count == "hold", metrics=metrics)
        box._scratch = path if access == "copy" else None
        box._synchronous = synchronous.upper()
        try:
            await prepare(db, path, synchronous.upper(), access)
        except sqlite3.Error as exc:
            await box.close()
            raise open_error(real, exc, metrics) from None
        except BaseException:
            await box.close()
            raise
        return box

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            async with self._lock:
                await db.close()
        if self._scratch is not None:
            discard_snapshot(self._scratch)
            self._scratch = None

    # ------------------------------------------------------------------ transactions

    def _live(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the outbox is closed")
        return self._db

    def _fail(self, exc: sqlite3.Error) -> StorageError:
        if self._metrics is not None:
            self._metrics.db_errors.inc()
        return StorageError(f"Cannot write the database at {self.path}: {_explain(exc)} (sqlite: {exc})")

    async def _rollback(self, db: aiosqlite.Connection) -> None:
        self._dirty = False
        try:
            await db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction was open
        try:
            await db.execute(f"PRAGMA synchronous = {self._synchronous}")  # after a failed synced commit
        except sqlite3.Error:
            pass

    @asynccontextmanager
    async def _tx(self, *, sync: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: all of it or nothing; SQLite failures become StorageError.

        `sync`: the commit is on disk when this returns, whatever `synchronous` says (in WAL
        mode NORMAL syncs only at checkpoints: a power cut may take the last commits)."""
        async with self._lock:
            db = self._live()
            if self._dirty:
                await self._rollback(db)
            synced = sync and self._synchronous in ("OFF", "NORMAL")
            try:
                if synced:
                    await db.execute("PRAGMA synchronous = FULL")
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.execute("COMMIT")
                if synced:
                    await db.execute(f"PRAGMA synchronous = {self._synchronous}")
            except sqlite3.Error as exc:
                await self._rollback(db)
                raise self._fail(exc) from None
            except Exception:
                await self._rollback(db)
                raise
            except BaseException:
                self._dirty = True  # cancelled: aiosqlite may still run queued statements
                raise

    async def _tx_in_thread(self, body: Callable[[aiosqlite.Connection], Awaitable[None]], *,
                            sync: bool = False) -> None:
        """`_tx` for a hot path: the whole body runs in the database thread (see `agent.outbox.inthread`);
        `sync` as for `_tx`."""
        async with self._lock:
            db = self._live()
            if self._dirty:
                await self._rollback(db)
            synced = self._synchronous if sync and self._synchronous in ("OFF", "NORMAL") else None
            try:
                await run_transaction(db, body, synced=synced)
            except sqlite3.Error as exc:
                raise self._fail(exc) from None

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            db = self._live()
            if self._dirty:
                await self._rollback(db)
            try:
                yield db
            except sqlite3.Error as exc:
                raise self._fail(exc) from None

    # ------------------------------------------------------------------ state and events

    async def load_states(self) -> dict[str, dict[str, Any]]:
        async with self._read() as db:
            rows = await db.execute_fetchall("SELECT machine, data FROM state")
            states = {str(r[0]): json.loads(r[1]) for r in rows}
            await attach_ids(db, states)
        return states

    async def known_totals(self) -> dict[str, dict[str, int]]:
        """Per machine, the logic totals the outbox knows were counted or acknowledged, by counter
        role ("count", "waste:<code>"): a logic state that is lost resumes from there, not below."""
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT machine, max(coalesce(last_total, 0), coalesce(acked_count - count_offset, 0)) "
                "FROM machines")
            # A rebase's waste offset is in what Prodsmart holds, not in the logic's total.
            waste = await db.execute_fetchall(
                "SELECT a.machine, a.code, a.quantity - coalesce(o.quantity_offset, 0) FROM acked_waste a "
                "LEFT JOIN waste_offsets o ON o.machine = a.machine AND o.code = a.code")
        out: dict[str, dict[str, int]] = {}
        for machine, total in rows:
            if total:
                out.setdefault(str(machine), {})["count"] = int(total)
        for machine, code, quantity in waste:
            out.setdefault(str(machine), {})[f"waste:{code}"] = int(quantity)
        return out

    async def machine_codes(self) -> list[str]:
        """Every machine the database knows of (state, queue, history or dead letters)."""
        sql = """SELECT machine FROM state UNION SELECT machine FROM calls UNION SELECT machine FROM machines
                 UNION SELECT machine FROM params UNION SELECT machine FROM dead_letters ORDER BY 1"""
        async with self._read() as db:
            return [str(r[0]) for r in await db.execute_fetchall(sql)]

    async def commit(
        self, states: Mapping[str, dict[str, Any]], events: Sequence[Event], now: float,
        delta_ids: Sequence[DeltaId] = (), *, sync: bool = False,
    ) -> None:
        """Store the logic states, the new delta de-duplication ids and the calls of `events`, in
        one transaction; `sync`: on disk before it returns (it releases a durable emitter, e.g.
        MQTT PUBACKs: a message acknowledged is never sent again)."""
        state_rows = [(m, _j(s)) for m, s in states.items()]
        lanes: dict[str, list[CounterChanged | RunStateChanged]] = {}
        params: dict[tuple[str, str], str] = {}
        for event in events:
            if isinstance(event, ParametersChanged):
                self._collect_params(event, params)
            else:
                lanes.setdefault(event.machine, []).append(event)

        async def write(db: aiosqlite.Connection) -> None:
            if state_rows:
                await db.executemany(
                    "INSERT INTO state (machine, data) VALUES (?, ?) "
                    "ON CONFLICT (machine) DO UPDATE SET data = excluded.data", state_rows)
            if lanes:
                await self._queue(db, lanes, now)
            if params:
                await self._upsert_params(db, params, now)
            if delta_ids:
                await store_ids(db, delta_ids, now)
            await self._enforce_bound(db)

        await self._tx_in_thread(write, sync=sync)

    def _collect_params(self, event: ParametersChanged, into: dict[tuple[str, str], str]) -> None:
        for code, value in event.values.items():
            text = _param_value(value)
            if text is None:
                log.warning("Parameter %s of %s has a value Prodsmart cannot take: %r (dropped)",
                            code, event.machine, value)
                continue
            into.pop((event.machine, code), None)  # keep the newest last
            into[(event.machine, code)] = text

    async def _upsert_params(
        self, db: aiosqlite.Connection, params: Mapping[tuple[str, str], str], now: float
    ) -> None:
        seq = int(next(iter(await db.execute_fetchall("SELECT value FROM meta WHERE key = 'param_seq'")))[0])
        rows = [(m, code, value, seq + i, now) for i, ((m, code), value) in enumerate(params.items(), 1)]
        await db.executemany(
            "INSERT INTO params (machine, code, value, seq, updated) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (machine, code) DO UPDATE SET value = excluded.value, seq = excluded.seq, "
            "updated = excluded.updated", rows)
        await db.execute("UPDATE meta SET value = ? WHERE key = 'param_seq'", (seq + len(rows),))

    async def _enforce_bound(self, db: aiosqlite.Connection) -> None:
        """Past max_size_mb, drop the oldest pending parameter values; calls are never dropped."""
        used = int(next(iter(await db.execute_fetchall(
            "SELECT (page_count - freelist_count) * page_size "
            "FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()")))[0])
        if used <= self._max_bytes:
            if self._over_bound:
                log.info("The database at %s is back under its size bound", self.path)
            self._over_bound = False
            return
        excess = used - self._max_bytes
        rows = await db.execute_fetchall(
            "SELECT rowid, 2 * (length(machine) + length(code)) + length(value) + 40 FROM params "
            "ORDER BY updated, seq LIMIT 10000")
        victims: list[int] = []
        for rowid, size in rows:
            if excess <= 0:
                break
            victims.append(int(rowid))
            excess -= int(size)
        if victims:
            await db.execute("DELETE FROM params WHERE rowid IN (SELECT value FROM json_each(?))",
                             (_j(victims),))
        level = logging.DEBUG if self._over_bound else logging.WARNING
        self._over_bound = True
        log.log(level, "The database at %s is over its bound of %.1f MB (%.1f MB used): dropped the %d "
                "oldest pending parameter values; counter and run-state calls are kept",
                self.path, self._max_bytes / 1048576, used / 1048576, len(victims))

