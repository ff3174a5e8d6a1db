"""How a commit's counter and run-state events become lane rows (the stored side of `agent.outbox.coalesce`).

Inherited by `agent.outbox.store.Outbox`; every method runs inside one of Outbox's transactions
(declared in `OutboxBase` for the type checker).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import aiosqlite

from agent.core.model import CounterChanged, RunStateChanged
from agent.outbox.coalesce import Acked, Lane, LaneCall
from agent.outbox.types import OutboxBase, _j

# The name of the module these methods came from, so log lines read as they always did.
log = logging.getLogger("agent.outbox.store")


class OutboxLanes(OutboxBase):
    """Lane rows: tails, offsets, what Prodsmart acknowledged, held waste; used by commit and rebase."""

    async def _queue(
        self, db: aiosqlite.Connection, events: Mapping[str, list[CounterChanged | RunStateChanged]],
        now: float,
    ) -> None:
        names = _j(list(events))
        offsets, acked = await self._machine_info(db, names)
        held = await self._waste_of(db, "held_waste", names) if self._hold else {}
        tails = await self._tails(db, names)
        waste_offsets = await self._waste_offsets(db, names)
        built: list[Lane] = []
        for machine, evs in events.items():
            lane = Lane(machine, tails.get(machine), offset=offsets.get(machine, 0),
                        acked=acked.get(machine, Acked()), held=held.get(machine, {}),
                        hold=self._hold, now=now, waste_offsets=waste_offsets.get(machine))
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

    async def _waste_offsets(self, db: aiosqlite.Connection, names: str) -> dict[str, dict[str, int]]:
        rows = await db.execute_fetchall(
            "SELECT machine, code, quantity_offset FROM waste_offsets "
            "WHERE machine IN (SELECT value FROM json_each(?))", (names,))
        out: dict[str, dict[str, int]] = {}
        for machine, code, offset in rows:
            out.setdefault(str(machine), {})[str(code)] = int(offset)
        return out

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
