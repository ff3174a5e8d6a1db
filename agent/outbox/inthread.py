"""A whole write transaction in aiosqlite's database thread: one hand-over instead of one per statement.

The outbox writes its transactions as coroutines over an `aiosqlite.Connection`
(`await db.execute(...)`). Each such await is a trip to aiosqlite's thread and back: a queue put,
a thread wake-up, a self-pipe write and an event-loop wake-up. A group commit is a dozen statements,
several times a second, and those trips cost more CPU than SQLite's own work.

`run_transaction(db, body)` runs the same `body` inside the database thread, with a `SyncDb` in
place of the connection: its methods run the statement at once on the sqlite3 connection and
return, so the body's coroutine never suspends and is driven to its end in one go. The body must
await nothing but the connection it is given (a `RuntimeError` says so otherwise).

It relies on two internals of aiosqlite (pinned in pyproject.toml): `Connection._execute(fn)`,
which runs `fn` in the connection's thread, and `Connection._conn`, the sqlite3 connection that
only that thread uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar, cast

import aiosqlite

T = TypeVar("T")


class Abandoned(Exception):
    """The caller was cancelled before the transaction committed: it is rolled back."""


class SyncDb:
    """The part of `aiosqlite.Connection` the outbox uses, run at once on the sqlite3 connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self._conn.execute(sql, tuple(parameters))

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        return self._conn.executemany(sql, parameters)

    async def execute_fetchall(self, sql: str, parameters: Iterable[Any] = ()) -> list[Any]:
        return self._conn.execute(sql, tuple(parameters)).fetchall()


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its end, here and now."""
    try:
        coro.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coro.close()
    raise RuntimeError("a transaction run in the database thread awaited something else than the database")


async def run_transaction(db: aiosqlite.Connection, body: Callable[[aiosqlite.Connection], Awaitable[T]],
                          *, synced: str | None = None) -> T:
    """BEGIN IMMEDIATE, `body`, COMMIT, all in the database thread; ROLLBACK if anything fails.

    `synced`: commit with `synchronous = FULL` (on disk when this returns), then set it back to
    this level.

    sqlite3 errors and the body's exceptions reach the caller as they are, after the rollback.
    A caller cancelled before the COMMIT ran leaves a transaction that is rolled back, as when
    a cancelled statement-by-statement transaction is rolled back by the next one.
    """
    abandoned = threading.Event()

    def job() -> T:
        conn = db._conn
        if synced is not None:
            conn.execute("PRAGMA synchronous = FULL")
        try:
            return transaction(conn)
        finally:
            if synced is not None:
                conn.execute(f"PRAGMA synchronous = {synced}")

    def transaction(conn: sqlite3.Connection) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = _drive(cast(Coroutine[Any, Any, T], body(cast(aiosqlite.Connection, SyncDb(conn)))))
            if abandoned.is_set():
                raise Abandoned
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the first error is the one to report
                    conn.execute("ROLLBACK")
            raise
        return result

    in_db_thread = cast(Callable[[Callable[[], T]], Awaitable[T]], db._execute)
    try:
        return await in_db_thread(job)
    except asyncio.CancelledError:
        abandoned.set()
        raise
