"""Opening the outbox's database, by who opens it: the agent, an operator's command, a reader, a dry run.

- "agent": the running agent, the only one that may settle what a crash left in flight;
  creates and migrates the database.
- "operator": a command that changes the database beside a (possibly) running agent (`rebase`,
  `dead-letters retry|drop`). Its writes are SQLite transactions serialised with the agent's
  (BEGIN IMMEDIATE, busy timeout); it never touches the agent's calls in flight.
- "reader": `status`, `dead-letters list`: a read-only connection (`mode=ro`, `query_only`):
  reading can never change the agent's state.
- "copy": `run --dry-run`: a private snapshot of the database in a temporary folder (or a fresh
  one), deleted on close, so that the real file is left exactly as it was found.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from agent.core.metrics import Metrics
from agent.outbox.schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE
from agent.outbox.types import StorageError, _explain

log = logging.getLogger("agent.outbox.store")

Access = Literal["agent", "operator", "reader", "copy"]
ACCESS: tuple[Access, ...] = ("agent", "operator", "reader", "copy")


async def connect(path: str, access: Access, metrics: Metrics | None) -> aiosqlite.Connection:
    """A connection for `access`; raises `StorageError` with a plain sentence."""
    if access == "reader":
        target, uri = read_only_uri(path), True
        await asyncio.to_thread(_refuse_newer_untouched, path)
    else:
        check_path(path)
        target, uri = path, False
    connection = aiosqlite.connect(target, isolation_level=None, uri=uri)
    try:
        return await connection
    except sqlite3.Error as exc:
        # aiosqlite stops its worker thread without waiting; wait here, while the loop still
        # runs, or the thread reports to a closed loop with a traceback at exit.
        await asyncio.to_thread(connection._thread.join, 5)
        raise open_error(path, exc, metrics) from None


async def prepare(db: aiosqlite.Connection, path: str, synchronous: str, access: Access) -> None:
    """Pragmas, an integrity check, migrations (not for a reader), and (agent only) in-flight calls."""
    await db.execute("PRAGMA busy_timeout = 5000")
    if access == "reader":
        await db.execute("PRAGMA query_only = 1")
        await _require_current(db, path)
        return
    # Before anything writes (switching to WAL rewrites the header): a newer version's file
    # stays exactly as it is.
    if await db.execute_fetchall("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'"):
        refuse_newer(await db.execute_fetchall("SELECT version FROM schema_version"), path)
    mode = await db.execute_fetchall("PRAGMA journal_mode = WAL")
    if str(next(iter(mode))[0]).lower() != "wal":
        log.warning("The database at %s cannot use WAL mode; it runs slower", path)
    await db.execute(f"PRAGMA synchronous = {synchronous}")
    check = [str(r[0]) for r in await db.execute_fetchall("PRAGMA quick_check(3)")]
    if check != ["ok"]:
        raise StorageError(
            f"Cannot open the database at {path}: it is damaged (corrupt?): {'; '.join(check)}")
    await migrate(db, path)
    if access in ("agent", "copy"):
        # Calls in flight when the agent stopped may have reached Prodsmart: their outcome is
        # unknown. Only the agent itself may say so: beside a running agent they are its live calls.
        await db.execute("UPDATE calls SET unknown = 1, inflight = 0 WHERE inflight = 1")


async def _require_current(db: aiosqlite.Connection, path: str) -> None:
    try:
        rows = list(await db.execute_fetchall("SELECT version FROM schema_version"))
    except sqlite3.Error:
        rows = []
    refuse_newer(rows, path)
    version = int(rows[0][0]) if rows else None
    if version != SCHEMA_VERSION:
        have = "no prodsmart-edge schema" if version is None else f"schema {version}"
        raise StorageError(f"Cannot read the database at {path}: it has {have}, this version reads "
                           f"schema {SCHEMA_VERSION} (start the agent once to upgrade it)")


async def migrate(db: aiosqlite.Connection, path: str) -> None:
    """Bring the schema to SCHEMA_VERSION in one transaction: all steps and the new version, or none."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        await db.execute(VERSION_TABLE)
        rows = list(await db.execute_fetchall("SELECT version FROM schema_version"))
        version = int(rows[0][0]) if rows else 0
        refuse_newer(rows, path)
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


def refuse_newer(rows: Iterable[Any], path: str) -> None:
    """A database a newer prodsmart-edge wrote is refused, before anything touches it."""
    version = max((int(r[0]) for r in rows), default=0)
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"Cannot open the database at {path}: a newer prodsmart-edge wrote it "
            f"(schema {version}, this version knows up to {SCHEMA_VERSION})")


def _refuse_newer_untouched(path: str) -> None:
    """A reader checks the version without leaving a trace: opening a WAL database, even read-only,
    creates its -wal and -shm files. With no -wal file no connection has the database open and
    everything committed is in the main file, which an immutable connection reads as it is."""
    if os.path.exists(path + "-wal"):
        return  # an agent has it open (or crashed with it): the files exist already
    try:
        conn = sqlite3.connect(read_only_uri(path) + "&immutable=1", uri=True)
        try:
            rows = conn.execute("SELECT version FROM schema_version").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return  # not ours, or damaged: the regular open says why
    refuse_newer(rows, path)


def snapshot(path: str) -> str:
    """A private copy of the database at `path` (or a fresh path) in a new temporary folder.

    The copy is made with SQLite's backup API over a read-only connection, so a running
    agent's committed state is copied consistently and the original is never written."""
    folder = tempfile.mkdtemp(prefix="prodsmart-edge-dry-run-")
    copy = os.path.join(folder, os.path.basename(path) or "agent.db")
    if not os.path.isfile(path):
        return copy
    try:
        source = sqlite3.connect(read_only_uri(path), uri=True)
        try:
            target = sqlite3.connect(copy)
            try:
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise StorageError(f"Cannot copy the database at {path} for a dry run: {_explain(exc)} "
                           f"(sqlite: {exc})") from None
    return copy


def read_only_uri(path: str) -> str:
    """The URI of a read-only connection to an existing database; `StorageError` if there is none."""
    if not os.path.isfile(path):
        raise StorageError(f"Cannot read the database at {path}: it does not exist yet "
                           "(the agent creates it when it first runs)")
    return Path(path).absolute().as_uri() + "?mode=ro"


def discard_snapshot(copy: str) -> None:
    shutil.rmtree(os.path.dirname(copy), ignore_errors=True)


def check_path(path: str) -> None:
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


def open_error(path: str, exc: sqlite3.Error, metrics: Metrics | None) -> StorageError:
    if metrics is not None:
        metrics.db_errors.inc()
    return StorageError(f"Cannot open the database at {path}: {_explain(exc)} (sqlite: {exc})")
