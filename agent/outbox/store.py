"""The crash-safe SQLite outbox: machine logic state and the Prodsmart calls it produced, in one transaction.

The only module that speaks SQL, with `agent.outbox.delivery` (the uplink's side) and
`agent.outbox.admin` (the operator's side: dead letters, rebase, inspection), whose methods `Outbox`
inherits; the values they share (`Call`, `Head`, `StorageError`) live in `agent.outbox.types`.

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
import os
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
from agent.outbox.coalesce import Acked, Lane, LaneCall
from agent.outbox.delivery import RESPONSE_LIMIT as RESPONSE_LIMIT
from agent.outbox.delivery import OutboxDelivery
from agent.outbox.inthread import run_transaction
from agent.outbox.schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE
from agent.outbox.types import Call as Call
from agent.outbox.types import Head as Head
from agent.outbox.types import StorageError as StorageError
from agent.outbox.types import _explain, _j, _param_value

log = logging.getLogger(__name__)

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class Outbox(OutboxDelivery, OutboxAdmin):
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
    ) -> Outbox:
        """Open (or create) the database; the directory must exist. Raises `StorageError`."""
        if synchronous.upper() not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
        if waste_without_count not in ("send", "hold"):
            raise ValueError("waste_without_count must be 'send' or 'hold'")
        _check_path(path)
        connection = aiosqlite.connect(path, isolation_level=None)
        try:
            db = await connection
        except sqlite3.Error as exc:
            # aiosqlite stops its worker thread without waiting; wait here, while the loop still
            # runs, or the thread reports to a closed loop with a traceback at exit.
            await asyncio.to_thread(connection._thread.join, 5)
            raise _open_error(path, exc, metrics) from None
        box = cls(db, path, max_bytes=int(max_size_mb * 1024 * 1024),
                  hold=waste_without_count == "hold", metrics=metrics)
        try:
            await box._prepare(synchronous.upper())
        except sqlite3.Error as exc:
            await box.close()
            raise _open_error(path, exc, metrics) from None
        except BaseException:
            await box.close()
            raise
        return box

    async def _prepare(self, synchronous: str) -> None:
        db = self._live()
        await db.execute("PRAGMA busy_timeout = 5000")
        mode = await db.execute_fetchall("PRAGMA journal_mode = WAL")
        if str(next(iter(mode))[0]).lower() != "wal":
            log.warning("The database at %s cannot use WAL mode; it runs slower", self.path)
        await db.execute(f"PRAGMA synchronous = {synchronous}")
        check = [str(r[0]) for r in await db.execute_fetchall("PRAGMA quick_check(3)")]
        if check != ["ok"]:
            raise StorageError(
                f"Cannot open the database at {self.path}: it is damaged (corrupt?): {'; '.join(check)}"
            )
        await self._migrate(db)
        # Calls in flight when the agent stopped may have reached Prodsmart: their outcome is unknown.
        await db.execute("UPDATE calls SET unknown = 1, inflight = 0 WHERE inflight = 1")

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(VERSION_TABLE)
            rows = list(await db.execute_fetchall("SELECT version FROM schema_version"))
            version = int(rows[0][0]) if rows else 0
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"Cannot open the database at {self.path}: a newer prodsmart-edge wrote it "
                    f"(schema {version}, this version knows up to {SCHEMA_VERSION})"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for sql in MIGRATIONS[step]:
                    await db.execute(sql)
            if not rows:
                await db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:
                await db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            await db.execute("COMMIT")
        except BaseException:
            try:
                await db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # BEGIN itself failed: nothing to roll back
            raise

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            async with self._lock:
                await db.close()

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

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: all of it or nothing; SQLite failures become StorageError."""
        async with self._lock:
            db = self._live()
            if self._dirty:
                await self._rollback(db)
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.execute("COMMIT")
            except sqlite3.Error as exc:
                await self._rollback(db)
                raise self._fail(exc) from None
            except Exception:
                await self._rollback(db)
                raise
            except BaseException:
                self._dirty = True  # cancelled: aiosqlite may still run queued statements
                raise

    async def _tx_in_thread(self, body: Callable[[aiosqlite.Connection], Awaitable[None]]) -> None:
        """`_tx` for a hot path: the whole body runs in the database thread (see `agent.outbox.inthread`)."""
        async with self._lock:
            db = self._live()
            if self._dirty:
                await self._rollback(db)
            try:
                await run_transaction(db, body)
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
        return {str(r[0]): json.loads(r[1]) for r in rows}

    async def machine_codes(self) -> list[str]:
        """Every machine the database knows of (state, queue, history or dead letters)."""
        sql = """SELECT machine FROM state UNION SELECT machine FROM calls UNION SELECT machine FROM machines
                 UNION SELECT machine FROM params UNION SELECT machine FROM dead_letters ORDER BY 1"""
        async with self._read() as db:
            return [str(r[0]) for r in await db.execute_fetchall(sql)]

    async def commit(
        self, states: Mapping[str, dict[str, Any]], events: Sequence[Event], now: float
    ) -> None:
        """Store the logic states and queue the calls of `events`, in one transaction."""
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
            await self._enforce_bound(db)

        await self._tx_in_thread(write)

    def _collect_params(self, event: ParametersChanged, into: dict[tuple[str, str], str]) -> None:
        for code, value in event.values.items():
            text = _param_value(value)
            if text is None:
                log.warning("Parameter %s of %s has a value Prodsmart cannot take: %r (dropped)",
                            code, event.machine, value)
                continue
            into.pop((event.machine, code), None)  # keep the newest last
            into[(event.machine, code)] = text

    async def _queue(
        self, db: aiosqlite.Connection, events: Mapping[str, list[CounterChanged | RunStateChanged]],
        now: float,
    ) -> None:
        names = _j(list(events))
        offsets, acked = await self._machine_info(db, names)
        held = await self._waste_of(db, "held_waste", names) if self._hold else {}
        tails = await self._tails(db, names)
        built: list[Lane] = []
        for machine, evs in events.items():
            lane = Lane(machine, tails.get(machine), offset=offsets.get(machine, 0),
                        acked=acked.get(machine, Acked()), held=held.get(machine, {}),
                        hold=self._hold, now=now)
            for e in evs:
                if isinstance(e, CounterChanged):
                    lane.add_counter(e.count, e.waste)
                else:
                    lane.add_runstate(e.running, e.type)
            built.append(lane)
        await self._write_lanes(db, built, now)

    async def _machine_info(
        self, db: aiosqlite.Connection, names: str
    ) -> tuple[dict[str, int], dict[str, Acked]]:
        rows = await db.execute_fetchall(
            "SELECT machine, count_offset, acked_count FROM machines "
            "WHERE machine IN (SELECT value FROM json_each(?))", (names,))
        waste = await self._waste_of(db, "acked_waste", names)
        offsets = {str(r[0]): int(r[1]) for r in rows}
        acked = {str(r[0]): Acked(r[2], waste.get(str(r[0]), {})) for r in rows}
        for machine, w in waste.items():
            acked.setdefault(machine, Acked(None, w))
        return offsets, acked

    async def _waste_of(
        self, db: aiosqlite.Connection, table: str, names: str
    ) -> dict[str, dict[str, int]]:
        rows = await db.execute_fetchall(
            f"SELECT machine, code, quantity FROM {table} WHERE machine IN (SELECT value FROM json_each(?))",
            (names,))
        out: dict[str, dict[str, int]] = {}
        for machine, code, qty in rows:
            out.setdefault(str(machine), {})[str(code)] = int(qty)
        return out

    async def _tails(self, db: aiosqlite.Connection, names: str) -> dict[str, LaneCall]:
        rows = await db.execute_fetchall(
            """SELECT id, machine, kind, count, waste, attempts, created FROM calls WHERE id IN
               (SELECT (SELECT MAX(id) FROM calls WHERE machine = m.value) FROM json_each(?) AS m)""",
            (names,))
        return {
            str(r[1]): LaneCall(int(r[0]), r[2], float(r[6]), count=r[3],
                                waste=json.loads(r[4]) if r[4] else {}, frozen=int(r[5]) > 0)
            for r in rows
        }

    async def _write_lanes(self, db: aiosqlite.Connection, lanes: list[Lane], now: float) -> None:
        updates = [(c.count, _j(c.waste) if c.waste else None, now, c.id)
                   for lane in lanes for c in lane.updated()]
        inserts = [(lane.machine, c.kind, c.count, _j(c.waste) if c.waste else None,
                    None if c.running is None else int(c.running), c.type, c.created, now)
                   for lane in lanes for c in lane.new]
        totals = [(lane.machine, lane.last_total) for lane in lanes if lane.last_total is not None]
        if updates:
            await db.executemany("UPDATE calls SET count = ?, waste = ?, updated = ? WHERE id = ?", updates)
        if inserts:
            await db.executemany(
                "INSERT INTO calls (machine, kind, count, waste, running, type, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", inserts)
        if totals:
            await db.executemany(
                "INSERT INTO machines (machine, last_total) VALUES (?, ?) "
                "ON CONFLICT (machine) DO UPDATE SET last_total = excluded.last_total", totals)
        for lane in lanes:
            if lane.held_changed:
                await self._set_held(db, lane.machine, lane.held)
            if lane.dropped:
                self._log_dropped(lane.machine, lane.dropped)

    async def _set_held(self, db: aiosqlite.Connection, machine: str, held: Mapping[str, int]) -> None:
        await db.execute("DELETE FROM held_waste WHERE machine = ?", (machine,))
        await db.executemany("INSERT INTO held_waste (machine, code, quantity) VALUES (?, ?, ?)",
                             [(machine, c, q) for c, q in held.items()])

    def _log_dropped(self, machine: str, dropped: list[str]) -> None:
        level = logging.DEBUG if machine in self._warned else logging.WARNING
        self._warned.add(machine)
        log.log(level, "Not sending values of %s that Prodsmart already holds: %s "
                "(after a rebase, or a counter the logic restarted)", machine, ", ".join(dropped))

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


def _check_path(path: str) -> None:
    """Plain-sentence errors for the usual installation mistakes, before SQLite's terse ones."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise StorageError(f"Cannot open the database at {path}: the directory {parent} does not exist")
    if os.path.isdir(path):
        raise StorageError(f"Cannot open the database at {path}: it is a directory")
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise StorageError(f"Cannot open the database at {path}: it is read-only")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StorageError(
            f"Cannot open the database at {path}: the directory {parent} is read-only "
            "(SQLite creates its journal files next to the database)")


def _open_error(path: str, exc: sqlite3.Error, metrics: Metrics | None) -> StorageError:
    if metrics is not None:
        metrics.db_errors.inc()
    return StorageError(f"Cannot open the database at {path}: {_explain(exc)} (sqlite: {exc})")
