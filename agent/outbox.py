"""The crash-safe SQLite outbox: machine logic state and the Prodsmart calls it produced, in one transaction.

The only module that speaks SQL, with `agent.outbox_admin` (the operator's side: dead letters,
rebase, inspection), whose methods `Outbox` inherits. One lane per machine: a strict FIFO of
counter and startstop calls (coalesced by `agent.coalesce`), plus pending parameter values
(newest per code) that ride on the next counter call or go to the parameters endpoint when the
lane is idle.

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
import math
import os
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiosqlite

from agent.coalesce import (
    Acked,
    Kind,
    Lane,
    LaneCall,
    counter_body,
    greater_only,
    parameters_body,
    parse_counter_body,
    startstop_body,
)
from agent.metrics import Metrics
from agent.model import CounterChanged, Event, ParametersChanged, RunStateChanged
from agent.outbox_admin import DeadLetter as DeadLetter
from agent.outbox_admin import MachineStats as MachineStats
from agent.outbox_admin import OutboxAdmin
from agent.outbox_schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

log = logging.getLogger(__name__)

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
RESPONSE_LIMIT = 2048  # bytes of a refused call's response kept with its dead letter


class StorageError(Exception):
    """The database cannot be used; the message says why in one sentence, then the SQLite detail."""


@dataclass(frozen=True, slots=True)
class Head:
    """The next call of one machine's lane (`id` 0: a parameters call built from pending values)."""

    machine: str
    kind: Kind
    id: int


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


def _j(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _param_value(value: Any) -> str | None:
    """JSON of a parameter value, or None if Prodsmart cannot take it (numbers or strings only)."""
    if isinstance(value, bool):
        return _j(int(value))  # Prodsmart documents numbers and strings, not booleans
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (int, float, str)):
        return _j(value)
    return None


class Outbox(OutboxAdmin):
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
        async with self._tx() as db:
            if state_rows:
                await db.executemany(
                    "INSERT INTO state (machine, data) VALUES (?, ?) "
                    "ON CONFLICT (machine) DO UPDATE SET data = excluded.data", state_rows)
            if lanes:
                await self._queue(db, lanes, now)
            if params:
                await self._upsert_params(db, params, now)
            await self._enforce_bound(db)

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

    # ------------------------------------------------------------------ delivery (the uplink)

    async def heads(self) -> list[Head]:
        """The first call of every lane, and the machines with only parameters waiting."""
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT machine, kind, id FROM calls "
                "WHERE id IN (SELECT MIN(id) FROM calls GROUP BY machine)")
            params = await db.execute_fetchall(
                "SELECT DISTINCT machine FROM params WHERE machine NOT IN (SELECT machine FROM calls)")
        heads = [Head(str(r[0]), r[1], int(r[2])) for r in rows]
        return heads + [Head(str(r[0]), "parameters", 0) for r in params]

    async def begin_attempt(self, head: Head) -> Call | None:
        """Freeze the call's body and mark it in flight; None if nothing is left to send."""
        async with self._tx() as db:
            if head.kind == "parameters":
                return await self._parameters_call(db, head.machine)
            rows = list(await db.execute_fetchall(
                "SELECT id, machine, kind, count, waste, running, type, body, attempts, unknown, inflight, "
                "param_seq, created FROM calls WHERE id = ?", (head.id,)))
            if not rows:
                return None
            r = rows[0]
            if int(r[8]) > 0:
                await db.execute("UPDATE calls SET attempts = attempts + 1, unknown = ?, inflight = 1 "
                                 "WHERE id = ?", (int(r[9] or r[10]), head.id))
                return Call(int(r[0]), str(r[1]), r[2], json.loads(r[7]), int(r[8]) + 1, bool(r[9] or r[10]),
                            int(r[11]), float(r[12]))
            if r[2] == "startstop":
                body: dict[str, Any] = startstop_body(bool(r[5]), str(r[6]))
                seq = 0
            else:
                built = await self._first_counter_body(db, str(r[1]), int(r[0]), r[3], r[4])
                if built is None:
                    return None
                body, seq = built
            await db.execute("UPDATE calls SET body = ?, param_seq = ?, attempts = 1, inflight = 1 "
                             "WHERE id = ?", (_j(body), seq, head.id))
            return Call(int(r[0]), str(r[1]), r[2], body, 1, False, seq, float(r[12]))

    async def _first_counter_body(
        self, db: aiosqlite.Connection, machine: str, call_id: int, count: int | None, waste: str | None
    ) -> tuple[dict[str, Any], int] | None:
        """Body of a counter call about to be sent the first time: greater values only, parameters on."""
        names = _j([machine])
        acked = (await self._machine_info(db, names))[1].get(machine, Acked())
        count, kept, dropped = greater_only(count, json.loads(waste) if waste else {}, acked)
        if dropped:
            self._log_dropped(machine, dropped)
        if count is None and (not kept or self._hold):
            await db.execute("DELETE FROM calls WHERE id = ?", (call_id,))
            if kept:  # hold: waste waits for the next count
                held = (await self._waste_of(db, "held_waste", names)).get(machine, {})
                await self._set_held(db, machine, {**kept, **held})
            return None
        rows = await db.execute_fetchall(
            "SELECT code, value, seq FROM params WHERE machine = ?", (machine,))
        params = {str(r[0]): json.loads(r[1]) for r in rows}
        seq = max((int(r[2]) for r in rows), default=0)
        return counter_body(count, kept, params), seq

    async def _parameters_call(self, db: aiosqlite.Connection, machine: str) -> Call | None:
        busy = await db.execute_fetchall("SELECT 1 FROM calls WHERE machine = ? LIMIT 1", (machine,))
        if list(busy):
            return None  # a counter call came: the parameters ride on it
        rows = list(await db.execute_fetchall(
            "SELECT code, value, seq, updated FROM params WHERE machine = ?", (machine,)))
        if not rows:
            return None
        body = parameters_body({str(r[0]): json.loads(r[1]) for r in rows})
        return Call(0, machine, "parameters", body, 0, False, max(int(r[2]) for r in rows),
                    min(float(r[3]) for r in rows))

    async def ack(self, call: Call, now: float) -> None:
        """Prodsmart took the call: remove it and remember what it now holds."""
        async with self._tx() as db:
            if call.id:
                await db.execute("DELETE FROM calls WHERE id = ?", (call.id,))
            await self._forget_params(db, call)
            if call.kind == "counter":
                await self._ack_counter(db, call, now)
            elif call.kind == "startstop":
                await db.execute(
                    "INSERT INTO machines (machine, acked_running, acked_type, acked_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (machine) DO UPDATE SET acked_running = excluded.acked_running, "
                    "acked_type = excluded.acked_type, acked_at = excluded.acked_at",
                    (call.machine, int(call.body["running"]), str(call.body["type"]), now))

    async def _ack_counter(self, db: aiosqlite.Connection, call: Call, now: float) -> None:
        count, waste, _ = parse_counter_body(call.body)
        await db.execute(
            "INSERT INTO machines (machine, acked_count, acked_at) VALUES (?, ?, ?) "
            "ON CONFLICT (machine) DO UPDATE SET acked_at = excluded.acked_at, acked_count = "
            "max(coalesce(acked_count, excluded.acked_count), coalesce(excluded.acked_count, acked_count))",
            (call.machine, count, now))
        await db.executemany(
            "INSERT INTO acked_waste (machine, code, quantity) VALUES (?, ?, ?) ON CONFLICT (machine, code) "
            "DO UPDATE SET quantity = max(quantity, excluded.quantity)",
            [(call.machine, c, q) for c, q in waste.items()])

    async def _forget_params(self, db: aiosqlite.Connection, call: Call) -> None:
        """Remove the pending parameter values the call carried, unless a newer value came since."""
        key = "name" if call.kind == "counter" else "code"
        codes = [str(p[key]) for p in call.body.get("parameters", [])]
        if codes:
            await db.executemany("DELETE FROM params WHERE machine = ? AND code = ? AND seq <= ?",
                                 [(call.machine, c, call.param_seq) for c in codes])

    async def attempt_failed(self, call: Call, *, unknown: bool) -> None:
        """The attempt did not get an answer; `unknown`: it may have reached Prodsmart."""
        if not call.id:
            return
        async with self._tx() as db:
            await db.execute("UPDATE calls SET inflight = 0, unknown = max(unknown, ?) WHERE id = ?",
                             (int(unknown), call.id))
            if not unknown and call.kind == "counter":
                await self._thaw(db, call)

    async def _thaw(self, db: aiosqlite.Connection, call: Call) -> None:
        """A counter call known not to have reached Prodsmart (connection refused...) thaws: it
        merges with the counter call queued behind it while it was in flight, and takes new
        counts again, so a network outage costs one call per segment; its body is rebuilt."""
        rows = list(await db.execute_fetchall(
            "SELECT id, kind, count, waste, attempts, unknown FROM calls WHERE machine = ? AND id > ? "
            "ORDER BY id LIMIT 1", (call.machine, call.id)))
        mine = list(await db.execute_fetchall("SELECT count, waste, unknown FROM calls WHERE id = ?",
                                              (call.id,)))
        if not mine or mine[0][2]:
            return  # an earlier attempt's outcome is unknown: its body stays frozen
        await db.execute("UPDATE calls SET attempts = 0, body = NULL, param_seq = 0 WHERE id = ?",
                         (call.id,))
        if rows and rows[0][1] == "counter" and not rows[0][4] and not rows[0][5]:
            nid, _, ncount, nwaste = rows[0][:4]
            waste = {**(json.loads(mine[0][1]) if mine[0][1] else {}),
                     **(json.loads(nwaste) if nwaste else {})}
            count = ncount if ncount is not None else mine[0][0]
            await db.execute("UPDATE calls SET count = ?, waste = ? WHERE id = ?",
                             (count, _j(waste) if waste else None, call.id))
            await db.execute("DELETE FROM calls WHERE id = ?", (nid,))

    async def dead_letter(self, call: Call, status: int, response: str, now: float) -> int:
        """Prodsmart refused the call: move it to the dead letters; returns the dead letter's id."""
        text = response.encode("utf-8", "replace")[:RESPONSE_LIMIT].decode("utf-8", "ignore")
        async with self._tx() as db:
            if call.id:
                await db.execute("DELETE FROM calls WHERE id = ?", (call.id,))
            if call.kind == "parameters":
                await self._forget_params(db, call)  # else they would be refused again and again
            cursor = await db.execute(
                "INSERT INTO dead_letters (machine, kind, body, status, response, attempts, created, "
                "failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (call.machine, call.kind, _j(call.body), status, text, call.attempts, call.created,
                 now))
            return int(cursor.lastrowid or 0)


def _call_of(r: Any) -> Call:
    if r[7] is not None:
        body: dict[str, Any] = json.loads(r[7])
    elif r[2] == "startstop":
        body = startstop_body(bool(r[5]), str(r[6]))
    else:
        body = counter_body(r[3], json.loads(r[4]) if r[4] else {})
    return Call(int(r[0]), str(r[1]), r[2], body, int(r[8]), bool(r[9] or r[10]), int(r[11]), float(r[12]))


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
