"""The pipeline (readings -> logic -> outbox) when the database refuses writes: held, not lost."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from agent.config.loader import parse_config
from agent.core.metrics import Metrics
from agent.core.model import CounterChanged, ParametersChanged, Reading, RunStateChanged, compact
from agent.logic.machine import Logic
from agent.outbox.store import Outbox
from agent.runtime.pipeline import Pipeline

CONFIG = """
connections:
  sim: {simulated: {}}
machines:
  M1: {connection: sim, counter: {signal: count, unit: a}, running: {signal: running, unit: a}}
"""


async def _set_max_pages(outbox: Outbox, pages: int | None) -> None:
    db = outbox._db
    assert db is not None
    if pages is None:
        pages = 1 << 30
    await db.execute(f"PRAGMA max_page_count = {pages}")


async def test_a_full_disk_holds_readings_in_memory_until_it_takes_them(tmp_path: Path) -> None:
    cfg = parse_config(CONFIG)
    spec = cfg.machines["M1"]
    assert spec.counter is not None and spec.running is not None
    outbox = await Outbox.open(str(tmp_path / "agent.db"))
    logic = Logic(cfg.machines, await outbox.load_states())
    pipeline = Pipeline(logic, outbox, Metrics(), commit_interval=0.02, on_commit=lambda: None)
    task = asyncio.create_task(pipeline.run())
    try:
        await pipeline.emit([Reading("sim", spec.counter.tag, 0), Reading("sim", spec.running.tag, True)],
                            durable=True)
        await pipeline.emit([Reading("sim", spec.counter.tag, 5)], durable=True)
        db = outbox._db
        assert db is not None
        pages = next(iter(await db.execute_fetchall("PRAGMA page_count")))[0]
        await _set_max_pages(outbox, pages)  # the file may not grow: a full disk
        # Production and stops while the disk is full: the commits fail, the agent goes on.
        raw, running = 5, True
        for _ in range(300):
            raw += 1
            running = not running
            await pipeline.emit([Reading("sim", spec.counter.tag, raw),
                                 Reading("sim", spec.running.tag, running)])
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.3)
        assert pipeline.storage_problem is not None and "full" in pipeline.storage_problem
        assert not task.done()
        # A durable emit (an MQTT message not yet acknowledged) waits for the database.
        raw += 1
        durable = asyncio.create_task(pipeline.emit([Reading("sim", spec.counter.tag, raw)], durable=True))
        await asyncio.sleep(0.2)
        assert not durable.done()
        await _set_max_pages(outbox, None)  # space again
        await asyncio.wait_for(durable, 10)
        assert pipeline.storage_problem is None
        calls = await outbox.queued("M1")
        runs = [c.body["running"] for c in calls if c.kind == "startstop"]
        counts = [c.body["count"] for c in calls if c.kind == "counter"]
        # Everything is there, in order: every stop and start, counts growing to the last raw value.
        assert len(runs) == 300 and all(a != b for a, b in itertools.pairwise(runs))
        assert counts == sorted(counts) and counts[-1] == raw
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.close()


def test_compact_merges_counts_between_run_state_changes_only() -> None:
    events = [
        CounterChanged("A", 1, {"S": 1}), CounterChanged("B", 7), CounterChanged("A", 2, {}),
        ParametersChanged("A", {"t": 1}), CounterChanged("A", None, {"S": 2}),
        RunStateChanged("A", False, "Stopped"), CounterChanged("A", 3),
        ParametersChanged("A", {"t": 2, "p": 1}),
    ]
    assert compact(events) == [
        CounterChanged("A", 2, {"S": 2}), CounterChanged("B", 7), ParametersChanged("A", {"t": 2, "p": 1}),
        RunStateChanged("A", False, "Stopped"), CounterChanged("A", 3),
    ]
