"""`prodsmart-edge status`: queues and last values from the database, live state from the agent."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, TextIO

from agent.cli.common import load, open_outbox
from agent.config.secrets import console_token
from agent.config.specs import AgentConfig

if TYPE_CHECKING:
    from agent.outbox.admin import DeadLetter, MachineStats


def _live(listen: str) -> dict[str, Any] | None:
    """The running agent's /api/status (the JSON the browser console shows), or None."""
    host, _, port = listen.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host
    token = console_token()  # needed when the agent listens beyond loopback
    request = urllib.request.Request(f"http://{host}:{port}/api/status",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data
    except urllib.error.HTTPError:  # console off or token missing: the plain /status still answers
        return _plain_status(f"http://{host}:{port}/status")
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _plain_status(url: str) -> dict[str, Any] | None:
    """/status (no console needed), in /api/status's shape for what `status` prints."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            data: dict[str, Any] = json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    data["machines"] = {code: {"tags": {role: r or {"quality": None} for role, r in roles.items()}}
                        for code, roles in data["machines"].items()}
    return data


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _budget(b: dict[str, Any]) -> str:
    rate = f"{b.get('requests_per_minute', 0):g} requests a minute"
    if b.get("mode") == "local":
        return f"{rate} (this agent alone)"
    agents = b.get("agents")
    seen = f", {agents} agent(s) seen" if agents is not None else ""
    if b.get("mode") == "fallback":
        return (f"FALLBACK: Redis at {b.get('redis')} cannot be reached; this agent's share is {rate} "
                f"of company {b.get('company')}'s {b.get('company_requests_per_minute', 0):g}{seen}")
    return f"shared through Redis at {b.get('redis')}: company {b.get('company')}, {rate}{seen}"


async def print_status(cfg: AgentConfig, out: TextIO) -> int:
    stats: dict[str, MachineStats] = {}
    dead: list[DeadLetter] = []
    if await asyncio.to_thread(os.path.exists, cfg.storage.path):  # else: nothing recorded yet
        outbox = await open_outbox(cfg, "reader")  # read-only: never changes the agent's state
        try:
            stats = {s.machine: s for s in await outbox.stats(time.time())}
            dead = await outbox.dead_letters()
        finally:
            await outbox.close()
    live = _live(cfg.metrics.listen) if cfg.metrics.enabled else None
    if live is None:
        out.write(f"agent: no answer on {cfg.metrics.listen} (not running, or metrics disabled)\n")
    else:
        paused = f", every call paused: {live['paused']}" if live.get("paused") else ""
        out.write(f"agent: running{paused}\n")
        budget = live.get("budget")
        if budget:
            out.write(f"  budget: {_budget(budget)}\n")
        for name, c in sorted(live["connections"].items()):
            state = "up" if c["up"] else f"DOWN ({c['reason']})"
            out.write(f"  connection {name:<20} {state}, since {_age(time.time() - c['since'])}\n")
    out.write(f"\n{'machine':<16} {'queued':>6} {'oldest':>7} {'lag':>6} {'params':>6} {'sent count':>11} "
              f"{'offset':>7} {'running':>8} {'dead':>5}  waste sent\n")
    for code in sorted(set(cfg.machines) | set(stats)):
        s = stats.get(code)
        if s is None:
            out.write(f"{code:<16} {'-':>6} (nothing recorded yet)\n")
            continue
        running = "-" if s.acked_running is None else ("yes" if s.acked_running else "no")
        waste = ", ".join(f"{k}={v}" for k, v in sorted(s.acked_waste.items())) or "-"
        note = "" if code in cfg.machines else "  (not in the config: draining)"
        count = "-" if s.acked_count is None else str(s.acked_count)
        out.write(f"{code:<16} {s.depth:>6} {_age(s.oldest_pending_age):>7} {_age(s.count_lag):>6} "
                  f"{s.pending_parameters:>6} "
                  f"{count:>11} {s.offset:>7} {running:>8} {s.dead_letters:>5}  {waste}{note}\n")
        if live is not None:
            for role, r in ((live["machines"].get(code) or {}).get("tags") or {}).items():
                value = ("no reading yet" if r["quality"] is None
                         else f"{r['value']!r} ({r['quality']}, {_age(r['age'])} ago)")
                out.write(f"    {role:<22} {value}\n")
    out.write(f"\ndead letters: {len(dead)}" + ("  (prodsmart-edge dead-letters CONFIG list)" if dead else "")
              + "\n")
    return 0


async def command(args: argparse.Namespace, out: TextIO) -> int:
    return await print_status(load(args.config), out)
