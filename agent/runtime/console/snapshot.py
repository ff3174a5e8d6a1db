"""The console's JSON (`/api/status`): machines, tags, connections and the uplink, from one look at the agent.

The browser console and `prodsmart-edge status` both read it: one source of truth. Values from
PLCs, brokers and Prodsmart pass through as data (the page renders them as text); no secret is
ever put in it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from agent import __version__
from agent.config.specs import MachineSpec, machine_tags
from agent.core.model import Quality, Reading, Scalar
from agent.outbox.admin import MachineStats
from agent.outbox.types import StorageError
from agent.runtime.console.history import History
from agent.runtime.service import Agent

MAX_TEXT = 500  # characters of a tag value or answer shown; the rest is cut
DEAD_LETTERS_SHOWN = 50


def plain(value: Scalar | None) -> Scalar | None:
    """A value JSON can carry to a browser: no NaN or infinities, long texts cut."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + "..."
    return value


def _tag(key: str, r: Reading | None, now: float) -> dict[str, Any]:
    if r is None:
        return {"tag": key, "value": None, "quality": None, "source_time": None, "received": None,
                "age": None}
    return {"tag": key, "value": plain(r.value), "quality": r.quality.value, "source_time": r.source_time,
            "received": r.received_time, "age": round(now - r.received_time, 1),
            "error": plain(r.error) if r.error else None}


def _tags(agent: Agent, m: MachineSpec, now: float) -> dict[str, dict[str, Any]]:
    last = agent.pipeline.last if agent.pipeline is not None else {}
    return {role: _tag(key, last.get((m.connection, key)), now) for role, key in machine_tags(m)}


def _alerts(agent: Agent, m: MachineSpec, tags: Mapping[str, Mapping[str, Any]],
            s: MachineStats | None, started: float, now: float) -> list[str]:
    alerts = []
    stale_after = agent.config.health.max_connection_down
    for role, t in tags.items():
        if t["quality"] is None:
            if now - started > stale_after:
                alerts.append(f"no reading of {role} yet")
        elif t["quality"] != Quality.GOOD.value:
            alerts.append(f"{role} reads with {t['quality']} quality")
        elif t["age"] is not None and t["age"] > stale_after:
            alerts.append(f"{role} has not changed or been read for {t['age']:.0f} s (stale?)")
    conn = agent.connections.get(m.connection)
    if conn is not None and not conn.up:
        alerts.append(f"connection {m.connection} is down")
    if s is not None and s.dead_letters:
        alerts.append(f"Prodsmart refused {s.dead_letters} call(s): see the dead letters")
    return alerts


def _last_call(agent: Agent, code: str) -> dict[str, Any] | None:
    call = agent.uplink.journal.last.get(code) if agent.uplink is not None else None
    if call is None:
        return None
    return {"at": call.at, "kind": call.kind, "status": call.status, "answer": plain(call.answer),
            "body": call.body}


def _machines(agent: Agent, history: History, stats: Mapping[str, MachineStats],
              oldest: Mapping[str, float], started: float, now: float) -> dict[str, dict[str, Any]]:
    logic = agent.pipeline.logic if agent.pipeline is not None else None
    glance = {g[0]: g for g in logic.glance()} if logic is not None else {}
    out: dict[str, dict[str, Any]] = {}
    for code, m in sorted(agent.config.machines.items()):
        s, g, h = stats.get(code), glance.get(code), history.machines.get(code)
        total = g[1] if g is not None else None
        running = g[2] if g is not None else None
        has_run = m.running is not None or m.idle_after is not None
        tags = _tags(agent, m, now)
        out[code] = {
            "connection": m.connection,
            "run": {"state": None if not has_run else "unknown" if running is None
                    else "running" if running else "stopped",
                    "type": g[3] if g is not None else None, "since": h.since() if h is not None else None,
                    "last_hour": h.shares(now) if h is not None and has_run else []},
            "read": None if total is None else total + (s.offset if s is not None else 0),
            "acked": s.acked_count if s is not None else None,
            "offset": s.offset if s is not None else 0,
            "lag": oldest.get(code),  # the age of its oldest part Prodsmart does not have yet
            "queued": s.depth if s is not None else 0,
            "queued_parameters": s.pending_parameters if s is not None else 0,
            "dead_letters": s.dead_letters if s is not None else 0,
            "last_call": _last_call(agent, code),
            "alerts": _alerts(agent, m, tags, s, started, now),
            "tags": tags,
        }
    for code in sorted(set(stats) - set(out)):  # removed from the configuration, calls still queued
        s = stats[code]
        if s.depth or s.pending_parameters or s.dead_letters:
            out[code] = _draining(agent, s)
    return out


def _draining(agent: Agent, s: MachineStats) -> dict[str, Any]:
    return {"connection": None, "run": {"state": None, "type": None, "since": None, "last_hour": []},
            "read": None, "acked": s.acked_count, "offset": s.offset, "lag": None, "queued": s.depth,
            "queued_parameters": s.pending_parameters, "dead_letters": s.dead_letters,
            "last_call": _last_call(agent, s.machine),
            "alerts": ["not in the configuration any more: its queued calls are still sent"], "tags": {}}


def _detail(agent: Agent, history: History, code: str) -> dict[str, Any] | None:
    logic = agent.pipeline.logic if agent.pipeline is not None else None
    inner = logic.inspect(code) if logic is not None else None
    if inner is None:
        return None
    sample = agent.metrics.registry.get_sample_value
    for role, c in inner["counters"].items():
        labels = {"machine": code, "tag": role}
        c["resets"] = int(sample("prodsmart_edge_counter_resets_total", labels) or 0)
        c["wraps"] = int(sample("prodsmart_edge_counter_wraps_total", labels) or 0)
        c["jumps_refused"] = int(sample("prodsmart_edge_counter_jumps_rejected_total", labels) or 0)
    if inner["run"] is not None:
        inner["run"]["reason"] = plain(inner["run"]["reason"])
    h = history.machines.get(code)
    inner["code"] = code
    inner["timeline"] = [s.row() for s in h.segments] if h is not None else []
    inner["counts"] = h.minutes.rows() if h is not None else []
    return inner


async def _uplink(agent: Agent, history: History, dead_count: int) -> dict[str, Any]:
    sample = agent.metrics.registry.get_sample_value
    up = agent.uplink
    dead: list[dict[str, Any]] = []
    if dead_count and agent.outbox is not None:
        for d in (await agent.outbox.dead_letters())[-DEAD_LETTERS_SHOWN:]:
            dead.append({"id": d.id, "machine": d.machine, "kind": d.kind, "status": d.status,
                         "response": plain(d.response), "body": dict(d.body), "attempts": d.attempts,
                         "failed_at": d.failed_at})
    budget = up.budget.describe() if up is not None else {}
    share = budget.get("requests_per_minute", agent.config.prodsmart.requests_per_minute)
    return {"budget": share, "budget_mode": budget.get("mode"),
            "paused": up.paused if up is not None else None,
            "pause_left": round(up.pause_left, 1) if up is not None else 0.0,
            "rate_limit_pauses": int(sample("prodsmart_edge_rate_limit_pauses_total") or 0),
            "auth_failures": int(sample("prodsmart_edge_auth_failures_total") or 0),
            "calls_per_minute": [[r[0], r[1]] for r in history.calls.rows()],
            "dead_letter_count": dead_count, "dead_letters": dead}


async def build(agent: Agent, history: History, started: float, machine: str | None = None) -> dict[str, Any]:
    """The whole JSON; with `machine`, also that machine's inner state and charts under "detail"."""
    now = time.time()
    alerts: list[str] = []
    stats: dict[str, MachineStats] = {}
    oldest: dict[str, float] = {}
    if agent.outbox is not None:
        try:
            stats = {s.machine: s for s in await agent.outbox.stats(now)}
            oldest = await agent.outbox.count_lags(now)
        except StorageError as exc:
            alerts.append(f"the database cannot be read: {exc}")
    if agent.pipeline is not None and agent.pipeline.storage_problem is not None:
        alerts.append(f"the database refuses commits (readings are held in memory): "
                      f"{agent.pipeline.storage_problem}")
    paused = agent.uplink.paused if agent.uplink is not None else None
    if paused == "auth":
        alerts.append("Prodsmart refuses the API credentials: nothing is sent until they work")
    elif paused == "rate_limited":
        alerts.append("Prodsmart's rate limit is reached: every machine waits")
    for name, c in sorted(agent.connections.items()):
        if not c.up:
            alerts.append(f"connection {name} is down: {c.reason or 'not connected yet'}")
    out: dict[str, Any] = {
        "version": __version__, "now": now, "started": started, "dry_run": agent.dry_run,
        "paused": paused, "alerts": alerts,
        # The request budget as `status` prints it (mode local/shared/fallback, share, agents seen).
        "budget": agent.uplink.budget.describe() if agent.uplink is not None else None,
        "connections": {name: {"protocol": agent.config.connections[name].protocol
                               if name in agent.config.connections else None,
                               "up": c.up, "since": c.since, "reason": c.reason}
                        for name, c in sorted(agent.connections.items())},
        "machines": _machines(agent, history, stats, oldest, started, now),
        "uplink": await _uplink(agent, history, sum(s.dead_letters for s in stats.values())),
    }
    if machine is not None:
        out["detail"] = _detail(agent, history, machine)
    return out
