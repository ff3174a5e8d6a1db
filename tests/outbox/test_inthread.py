"""Whole transactions in the database thread: all or nothing, also when they fail or are cancelled."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from agent.core.model import CounterChanged, ParametersChanged, RunStateChanged
from agent.outbox.inthread import run_transaction
from agent.outbox.store import Outbox, StorageError


def _db_thread_busy(box: Outbox, seconds: float) -> asyncio.Future[Any]:
    """Keep the database thread busy, so what is queued behind it waits."""
    db = box._live()
    return asyncio.ensure_future(db._execute(time.sleep, seconds))


async def test_a_commit_in_the_database_thread_stores_states_lanes_and_order(box: Outbox) -> None:
    await box.commit({"A": {"v": 1}}, [CounterChanged("A", 5), RunStateChanged("A", False, "Stopped"),
                                       ParametersChanged("A", {"temp": 181.5})], now=1.0)
    await box.commit({"A": {"v": 2}}, [CounterChanged("A", 9)], now=2.0)
    assert await box.load_states() == {"A": {"v": 2}}
    assert [(c.kind, dict(c.body)) for c in await box.queued()] == [
        ("counter", {"count": 5}), ("startstop", {"type": "Stopped", "running": 0}),
        ("counter", {"count": 9})]


async def test_a_cancelled_commit_is_rolled_back_and_the_next_one_works(box: Outbox) -> None:
    busy = _db_thread_busy(box, 0.3)
    task = asyncio.create_task(box.commit({"A": {"v": 1}}, [CounterChanged("A", 5)], now=1.0))
    await asyncio.sleep(0.05)  # the commit waits behind the busy thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await busy
    assert await box.queued() == []
    assert await box.load_states() == {}
    await box.commit({"A": {"v": 2}}, [CounterChanged("A", 7)], now=2.0)
    assert [dict(c.body) for c in await box.queued()] == [{"count": 7}]
    assert await box.load_states() == {"A": {"v": 2}}


async def test_a_failing_statement_rolls_back_the_statements_before_it(tmp_path: Path) -> None:
    async with aiosqlite.connect(str(tmp_path / "t.db"), isolation_level=None) as db:
        await db.execute("CREATE TABLE t (x INTEGER NOT NULL)")

        async def body(tx: aiosqlite.Connection) -> None:
            await tx.execute("INSERT INTO t VALUES (1)")
            await tx.execute("INSERT INTO t VALUES (NULL)")

        with pytest.raises(sqlite3.IntegrityError):
            await run_transaction(db, body)
        assert list(await db.execute_fetchall("SELECT x FROM t")) == []
        assert not db.in_transaction


async def test_a_body_that_awaits_anything_else_is_refused_and_rolled_back(tmp_path: Path) -> None:
    async with aiosqlite.connect(str(tmp_path / "t.db"), isolation_level=None) as db:
        await db.execute("CREATE TABLE t (x INTEGER)")

        async def body(tx: aiosqlite.Connection) -> None:
            await tx.execute("INSERT INTO t VALUES (1)")
            await asyncio.sleep(0)

        with pytest.raises(RuntimeError, match="awaited something else"):
            await run_transaction(db, body)
        assert list(await db.execute_fetchall("SELECT x FROM t")) == []


async def test_a_database_failure_in_a_commit_is_a_storage_error_and_loses_nothing(box: Outbox) -> None:
    await box.commit({}, [CounterChanged("A", 5)], now=1.0)
    db = box._live()
    await db.execute("CREATE TRIGGER refuse BEFORE UPDATE ON calls "
                     "BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    with pytest.raises(StorageError, match="disk says no"):
        await box.commit({"A": {"v": 1}}, [CounterChanged("A", 9)], now=2.0)
    assert [dict(c.body) for c in await box.queued()] == [{"count": 5}]
    assert await box.load_states() == {}
    await db.execute("DROP TRIGGER refuse")
    await box.commit({"A": {"v": 1}}, [CounterChanged("A", 9)], now=2.0)
    assert [dict(c.body) for c in await box.queued()] == [{"count": 9}]
