"""A 10-minute network outage (compressed): calls coalesce, then drain within the rate limit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.config.loader import parse_config
from agent.core.metrics import Metrics
from agent.core.model import Reading
from agent.logic.machine import Logic
from agent.outbox.store import Outbox
from agent.sandbox import Sandbox, SandboxOptions
from agent.uplink.client import Credentials, Uplink
from tests.conftest import free_port

MACHINES = ("M1", "M2", "M3")
OUTAGE = 600.0  # seconds of simulated time
STEP = 0.1  # every machine's count changes every 100 ms while it runs
RPM = 120


def _stopped(index: int, t: float) -> bool:
    """Two stops per machine, at different moments."""
    a, b = 100 + index * 17, 400 + index * 23
    return a <= t < a + 30 or b <= t < b + 20


async def test_outage_drains_in_one_counter_call_per_segment(tmp_path: Path) -> None:
    port = free_port()
    cfg = parse_config(f"""
prodsmart: {{url: "http://127.0.0.1:{port}", requests_per_minute: {RPM}, timeout: 2s,
             retry_min: 50ms, retry_max: 500ms}}
connections:
  sim: {{simulated: {{}}}}
machines:
""" + "".join(f"""  {m}:
    connection: sim
    counter: {{signal: count, unit: {m}}}
    running: {{signal: running, unit: {m}}}
""" for m in MACHINES))
    keys = {m: (spec.counter.tag, spec.running.tag) for m, spec in cfg.machines.items()
            if spec.counter is not None and spec.running is not None}
    outbox = await Outbox.open(str(tmp_path / "agent.db"))
    logic = Logic(cfg.machines)
    uplink = Uplink(outbox, cfg.prodsmart, Credentials("sandbox-key", "sandbox-secret"), Metrics())
    task = asyncio.create_task(uplink.run())
    produced = dict.fromkeys(MACHINES, 0)
    transitions = dict.fromkeys(MACHINES, 0)
    was_running = dict.fromkeys(MACHINES, True)
    t0 = time.time()
    try:
        # The outage: nothing listens on Prodsmart's port; the uplink keeps trying meanwhile.
        events = []
        for step in range(int(OUTAGE / STEP)):
            sim = step * STEP
            now = t0 + sim
            for i, m in enumerate(MACHINES):
                running = not _stopped(i, sim)
                if running and step:
                    produced[m] += 1
                transitions[m] += running != was_running[m]
                was_running[m] = running
                count_key, run_key = keys[m]
                events += logic.apply(Reading("sim", run_key, running, received_time=now), now)
                events += logic.apply(Reading("sim", count_key, produced[m], received_time=now), now)
            events += logic.tick(now)
            if step % 20 == 19:  # group commit every 2 s of simulated time
                await outbox.commit(logic.dirty_states(), events, now)
                uplink.wake()
                events = []
                await asyncio.sleep(0)
        events += logic.tick(t0 + OUTAGE + 1)
        await outbox.commit(logic.dirty_states(), events, t0 + OUTAGE)
        assert sum(transitions.values()) == 12

        # The network is back.
        with Sandbox(SandboxOptions(requests_per_minute=RPM), port=port) as sandbox:
            uplink.wake()
            deadline = time.monotonic() + 60
            while sum(s.depth for s in await outbox.stats(time.time())) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            ledger = sandbox.ledger()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.close()

    segments = {m: transitions[m] + 1 for m in MACHINES}
    for m in MACHINES:
        calls = [a for a in ledger.accepted if a["machine"] == m]
        counters = [a for a in calls if a["endpoint"] == "counter"]
        runs = [a for a in calls if a["endpoint"] == "startstop"]
        assert len(runs) == transitions[m] == 4
        assert len(counters) <= segments[m], (m, [c["body"] for c in counters])
        assert ledger.counters[m]["count"] == produced[m]
        # Order: each run-state change between the counts of the segments around it.
        kinds = [a["endpoint"] for a in calls]
        assert kinds.count("startstop") == 4 and kinds[-1] in ("counter", "startstop")
    assert len(ledger.accepted) <= sum(transitions.values()) + sum(segments.values())
    assert ledger.rejected == []
    # Never faster than the configured rate: any k+1 calls span at least (k - burst) / rate.
    times = sorted(a["time"] for a in ledger.accepted)
    burst = 2
    for i in range(len(times)):
        for j in range(i + burst + 1, len(times)):
            assert times[j] - times[i] >= (j - i - burst) * 60 / RPM - 0.05, (i, j, times[j] - times[i])
