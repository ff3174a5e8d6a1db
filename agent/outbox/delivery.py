"""Delivery, the uplink's side of the outbox (heads, attempts, acks, dead letters), inherited by `Outbox`."""

from __future__ import annotations

import json
from typing import Any

import aiosqlite

from agent.outbox.coalesce import (
    Acked,
    counter_body,
    greater_only,
    parameters_body,
    parse_counter_body,
    startstop_body,
)
from agent.outbox.types import Call, Head, OutboxBase, _j

RESPONSE_LIMIT = 2048  # bytes of a refused call's response kept with its dead letter


class OutboxDelivery(OutboxBase):
    """How the uplink drains the outbox; only `agent.outbox.store.Outbox` inherits it.

    `heads()` -> `begin_attempt()` -> `ack()` / `attempt_failed()` / `dead_letter()`, through the
    transactions and lane helpers Outbox provides (declared in `OutboxBase` for the type checker, so
    nothing here runs without them).
    """

    async def heads(self) -> list[Head]:
        """The first call of every lane, and the machines with only parameters waiting."""
        async with self._read() as db:
            rows = await db.execute_fetchall(
                "SELECT c.machine, c.kind, c.id, c.created, f.oldest FROM calls AS c JOIN "
                "(SELECT MIN(id) AS first, MIN(CASE WHEN kind = 'counter' THEN created END) AS oldest "
                "FROM calls GROUP BY machine) AS f ON c.id = f.first")
            params = await db.execute_fetchall(
                "SELECT machine, MIN(updated) FROM params WHERE machine NOT IN (SELECT machine FROM calls) "
                "GROUP BY machine")
        heads = [Head(str(r[0]), r[1], int(r[2]), float(r[3]), None if r[4] is None else float(r[4]))
                 for r in rows]
        return heads + [Head(str(r[0]), "parameters", 0, float(r[1])) for r in params]

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
                if self._metrics is not None and call.created:
                    # The call's `created` is when its oldest part was counted: the lag it ends.
                    self._metrics.lag_at_delivery.observe(max(0.0, now - call.created))
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

    async def outcome_unknown(self, call: Call) -> bool:
        """Whether an attempt of the call may have been applied, as the database knows it now (a
        rebase while the call was in flight marks it so: its old count may be below Prodsmart's)."""
        if call.unknown:
            return True
        async with self._read() as db:
            rows = list(await db.execute_fetchall("SELECT unknown FROM calls WHERE id = ?", (call.id,)))
        return bool(rows and rows[0][0])

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

    async def split_parameters(self, call: Call, status: int, response: str, now: float) -> int:
        """Prodsmart refused a counter call that carries parameters: keep the parameters alone as a
        dead letter (parameters-endpoint form, so a retry sends them there) and queue the count
        again without them; a refused call was not applied. Returns the dead letter's id."""
        values = {str(p["name"]): p["value"] for p in call.body.get("parameters", [])}
        letter = Call(0, call.machine, "parameters", parameters_body(values), call.attempts,
                      param_seq=call.param_seq, created=call.created)
        body = {k: v for k, v in call.body.items() if k != "parameters"}
        text = response.encode("utf-8", "replace")[:RESPONSE_LIMIT].decode("utf-8", "ignore")
        async with self._tx() as db:
            await self._forget_params(db, letter)
            await db.execute("UPDATE calls SET body = ?, param_seq = 0, inflight = 0 WHERE id = ?",
                             (_j(body), call.id))
            cursor = await db.execute(
                "INSERT INTO dead_letters (machine, kind, body, status, response, attempts, created, "
                "failed_at) VALUES (?, 'parameters', ?, ?, ?, ?, ?, ?)",
                (call.machine, _j(letter.body), status, text, call.attempts, call.created, now))
            return int(cursor.lastrowid or 0)

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
