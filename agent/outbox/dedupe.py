"""Delta de-duplication ids in their own table: written once per id, bounded by count and by age.

A delta counter (an MQTT publisher sending "3 more parts") with a message id remembers the ids
it counted, so that a QoS 1 redelivery is not counted twice, also after a restart. The logic
keeps them in memory; the outbox stores only the new ones of each commit (instead of rewriting
every id with the state JSON), keeps the newest `DEDUPE_IDS` per role and none older than
`MAX_ID_AGE`, and hands them back inside the states it loads, where `Counter` reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import aiosqlite

from agent.logic.counter import DEDUPE_IDS
from agent.outbox.types import _j

MAX_ID_AGE = 30 * 86400.0  # seconds: a broker holding a message longer than this is not plausible

DeltaId = tuple[str, str, str]  # (machine, role, message id)


async def store_ids(db: aiosqlite.Connection, ids: Iterable[DeltaId], now: float) -> None:
    """Remember new ids, then forget the oldest past the count bound and those past the age bound."""
    rows = [(m, r, i, now) for m, r, i in ids]
    if not rows:
        return
    await db.executemany(
        "INSERT OR IGNORE INTO delta_ids (machine, role, id, seen) VALUES (?, ?, ?, ?)", rows)
    roles = sorted({(m, r) for m, r, _, _ in rows})
    await db.executemany(
        "DELETE FROM delta_ids WHERE machine = ? AND role = ? AND n <= (SELECT n FROM delta_ids "
        "WHERE machine = ? AND role = ? ORDER BY n DESC LIMIT 1 OFFSET ?)",
        [(m, r, m, r, DEDUPE_IDS) for m, r in roles])
    await db.execute("DELETE FROM delta_ids WHERE seen < ?", (now - MAX_ID_AGE,))


async def attach_ids(db: aiosqlite.Connection, states: Mapping[str, dict[str, Any]]) -> None:
    """Put each role's stored ids, oldest first, into its counter state as "ids" (what Counter loads)."""
    if not states:
        return
    rows = await db.execute_fetchall(
        "SELECT machine, role, id FROM delta_ids WHERE machine IN (SELECT value FROM json_each(?)) "
        "ORDER BY n", (_j(list(states)),))
    found: dict[tuple[str, str], list[str]] = {}
    for machine, role, msg_id in rows:
        found.setdefault((str(machine), str(role)), []).append(str(msg_id))
    for (machine, role), ids in found.items():
        state = states.get(machine)
        counters = state.get("counters") if isinstance(state, dict) else None
        role_state = counters.get(role) if isinstance(counters, dict) else None
        if isinstance(role_state, dict):
            role_state["ids"] = ids
