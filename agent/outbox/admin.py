"""Dead letters, rebase and inspection: the operator's side of the outbox, inherited by `Outbox`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from agent.outbox.coalesce import Acked, Kind, Lane, parse_counter_body
from agent.outbox.types import Call, OutboxBase, _call_of, _j, _param_value

# The name of the module these methods came from, so log lines read as they always did.
log = logging.getLogger("agent.outbox.store")


@dataclass(frozen=True, slots=True)
class MachineStats:
    machine: str
    depth: int  # counter and startstop calls waiting
    oldest_pending_age: float | None
    pending_parameters: int
    offset: int
    acked_count: int | None
    acked_waste: Mapping[str, int] = field(default_factory=dict)
    acked_running: bool | None = None
    dead_letters: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    machine: str
    kind: Kind
    body: Mapping[str, Any]
    status: int
    response: str
    attempts: int
    created: float
    failed_at: float

    @property
    def endpoint(self) -> Kind:
        return self.kind


class OutboxAdmin(OutboxBase):
    """What the operator does with the outbox; only `agent.outbox.store.Outbox` inherits it.

    Plain SQL over the outbox's tables, through the transactions and lane helpers Outbox provides
    (declared in `OutboxBase` for the type checker only, so nothing here runs without them); the shared values
    and helpers come from `agent.outbox.types`.
    """

    # ------------------------------------------------------------------ operator actions

    async def dead_letters(self) -> list[DeadLetter]:
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT id, machine, kind, body, status, response, attempts, created, failed_at "
                "FROM dead_letters ORDER BY id")
        return [DeadLetter(int(r[0]), str(r[1]), r[2], json.loads(r[3]), int(r[4]), str(r[5]), int(r[6]),
                           float(r[7]), float(r[8])) for r in rows]

    async def drop_dead_letter(self, id: int) -> bool:
        async with self._tx() as db:
            cursor = await db.execute("DELETE FROM dead_letters WHERE id = ?", (id,))
            return cursor.rowcount > 0

    async def retry_dead_letter(self, id: int) -> bool:
        """Queue a dead letter again at its lane's tail; False if there is no such dead letter.

        A count or waste quantity Prodsmart already holds is left out; stale parameter values
        are kept only for codes that have no newer pending value.
        """
        async with self._tx() as db:
            rows = list(await db.execute_fetchall(
                "SELECT machine, kind, body, created FROM dead_letters WHERE id = ?", (id,)))
            if not rows:
                return False
            machine, kind, body, created = str(rows[0][0]), rows[0][1], json.loads(rows[0][2]), rows[0][3]
            await db.execute("DELETE FROM dead_letters WHERE id = ?", (id,))
            if kind == "startstop":
                await db.execute(
                    "INSERT INTO calls (machine, kind, running, type, created, updated) "
                    "VALUES (?, 'startstop', ?, ?, ?, ?)",
                    (machine, int(body["running"]), str(body["type"]), created, created))
                return True
            if kind == "parameters":
                params = {str(p["code"]): p["value"] for p in body["parameters"]}
            else:
                count, waste, params = parse_counter_body(body)
                await self._requeue_counter(db, machine, count, waste, float(created))
            await self._restore_params(db, machine, params, float(created))
            return True

    async def _requeue_counter(
        self, db: aiosqlite.Connection, machine: str, count: int | None, waste: dict[str, int], now: float
    ) -> None:
        names = _j([machine])
        acked = (await self._machine_info(db, names))[1]
        held = await self._waste_of(db, "held_waste", names) if self._hold else {}
        lane = Lane(machine, None, offset=0, acked=acked.get(machine, Acked()),
                    held=held.get(machine, {}), hold=self._hold, now=now)
        # No tail: a requeued call never merges into a queued one, it may be older than it.
        lane.add_counter(count, waste)
        lane.last_total = None  # the count already carries its offset: not a logic total
        await self._write_lanes(db, [lane], now)

    async def _restore_params(
        self, db: aiosqlite.Connection, machine: str, params: Mapping[str, Any], now: float
    ) -> None:
        texts = {(machine, c): t for c, v in params.items() if (t := _param_value(v)) is not None}
        existing = {str(r[0]) for r in await db.execute_fetchall(
            "SELECT code FROM params WHERE machine = ?", (machine,))}
        fresh = {k: v for k, v in texts.items() if k[1] not in existing}
        if fresh:
            await self._upsert_params(db, fresh, now)

    async def rebase(self, machine: str, count: int) -> int:
        """Make the next count sent for `machine` greater than `count`; returns the new offset.

        `count` is what Prodsmart holds now. The offset is chosen so that the next total the
        logic reports goes out above it (and never at or below a count Prodsmart acknowledged);
        queued, not yet attempted counter calls are rewritten with the new offset.
        """
        async with self._tx() as db:
            rows = list(await db.execute_fetchall(
                "SELECT count_offset, last_total, acked_count FROM machines WHERE machine = ?", (machine,)))
            old, total, acked = (int(rows[0][0]), rows[0][1], rows[0][2]) if rows else (0, None, None)
            floor = count if acked is None else max(count, int(acked))
            offset = floor - int(total or 0)
            await db.execute(
                "INSERT INTO machines (machine, count_offset, acked_count) VALUES (?, ?, ?) "
                "ON CONFLICT (machine) DO UPDATE SET count_offset = excluded.count_offset, "
                "acked_count = excluded.acked_count", (machine, offset, floor))
            await self._rewrite_queued(db, machine, offset - old, floor)
        log.info("Rebased %s: Prodsmart holds %d, offset is now %d", machine, floor, offset)
        return offset

    async def _rewrite_queued(self, db: aiosqlite.Connection, machine: str, shift: int, floor: int) -> None:
        rows = await db.execute_fetchall(
            "SELECT id, count, waste FROM calls WHERE machine = ? AND kind = 'counter' AND attempts = 0",
            (machine,))
        for call_id, count, waste in rows:
            new = None if count is None or count + shift <= floor else count + shift
            if new is None and not waste:
                await db.execute("DELETE FROM calls WHERE id = ?", (call_id,))
            else:
                await db.execute("UPDATE calls SET count = ? WHERE id = ?", (new, call_id))

    # ------------------------------------------------------------------ inspection

    async def queued(self, machine: str | None = None) -> list[Call]:
        """The calls waiting, lane by lane in FIFO order (bodies of unattempted calls as of now)."""
        sql = ("SELECT id, machine, kind, count, waste, running, type, body, attempts, unknown, inflight, "
               "param_seq, created FROM calls")
        args: tuple[str, ...] = ()
        if machine is not None:
            sql, args = sql + " WHERE machine = ?", (machine,)
        async with self._read() as db:
            rows = await db.execute_fetchall(sql + " ORDER BY machine, id", args)
        return [_call_of(r) for r in rows]

    async def pending_parameters(self, machine: str) -> dict[str, Any]:
        async with self._read() as db:
            rows = await db.execute_fetchall("SELECT code, value FROM params WHERE machine = ?", (machine,))
        return {str(r[0]): json.loads(r[1]) for r in rows}

    async def stats(self, now: float) -> list[MachineStats]:
        """Per machine: queue depth and age, what Prodsmart holds, dead letters."""
        async with self._read() as db:
            calls = _by_machine(await db.execute_fetchall(
                "SELECT machine, COUNT(*), MIN(created) FROM calls GROUP BY machine"))
            params = _by_machine(await db.execute_fetchall(
                "SELECT machine, COUNT(*) FROM params GROUP BY machine"))
            dead = _by_machine(await db.execute_fetchall(
                "SELECT machine, COUNT(*) FROM dead_letters GROUP BY machine"))
            info = _by_machine(await db.execute_fetchall(
                "SELECT machine, count_offset, acked_count, acked_running FROM machines"))
            waste = await db.execute_fetchall("SELECT machine, code, quantity FROM acked_waste")
            known = {str(r[0]) for r in await db.execute_fetchall("SELECT machine FROM state")}
        acked_waste: dict[str, dict[str, int]] = {}
        for machine, code, qty in waste:
            acked_waste.setdefault(str(machine), {})[str(code)] = int(qty)
        out = []
        for m in sorted(known | set(calls) | set(params) | set(dead) | set(info) | set(acked_waste)):
            c, i = calls.get(m), info.get(m)
            out.append(MachineStats(
                machine=m, depth=int(c[0]) if c else 0,
                oldest_pending_age=max(0.0, now - float(c[1])) if c else None,
                pending_parameters=int(params[m][0]) if m in params else 0,
                offset=int(i[0]) if i else 0, acked_count=i[1] if i else None,
                acked_waste=acked_waste.get(m, {}),
                acked_running=None if i is None or i[2] is None else bool(i[2]),
                dead_letters=int(dead[m][0]) if m in dead else 0))
        self._export(out)
        return out

    async def oldest_counters(self, now: float) -> dict[str, float]:
        """Per machine: the age of its oldest waiting counter call (coalescing keeps the oldest
        creation time), i.e. how long its oldest unacknowledged part has waited."""
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT machine, MIN(created) FROM calls WHERE kind = 'counter' GROUP BY machine")
        return {str(r[0]): max(0.0, now - float(r[1])) for r in rows}

    def _export(self, stats: list[MachineStats]) -> None:
        if self._metrics is None:
            return
        for s in stats:
            self._metrics.queue_depth.labels(s.machine).set(s.depth)
            self._metrics.oldest_pending.labels(s.machine).set(s.oldest_pending_age or 0.0)
        self._metrics.dead_letters.set(sum(s.dead_letters for s in stats))


def _by_machine(rows: Iterable[Any]) -> dict[str, tuple[Any, ...]]:
    return {str(r[0]): tuple(r[1:]) for r in rows}
