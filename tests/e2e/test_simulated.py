"""End to end: the agent as a separate process, SIGKILLed mid-run, against a faulty sandbox.

The simulated PLCs go on producing while the agent is dead, exactly like real machines,
so the true count at the end is known; the sandbox ledger must hold exactly that.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from agent.config.loader import load_config
from agent.sandbox import Fault
from agent.sources.simulated.config import SimulatedConnection
from agent.sources.simulated.source import SimulatedPlc
from tests.conftest import free_port
from tests.support.harness import AgentProcess, agent_env, start_sandbox, wait_until, write_config

RESET_EVERY = 11.0
TYPES = {1: "Maintenance", 2: "Material shortage"}

CONFIG = """
prodsmart:
  url: {url}
  requests_per_minute: 110
  timeout: 1s
  retry_min: 100ms
  retry_max: 1500ms
storage:
  path: {db}
  commit_interval: 100ms
metrics:
  listen: 127.0.0.1:{metrics_port}
connections:
  sim-a:
    simulated: {{seed: 7, poll: 100ms, rate: 20, cycle: 9s, stopped: 3500ms, reset_every: {reset}s,
                scrap_every: 15, start_at: {start}, stop_at: {stop}}}
  sim-b:
    simulated: {{seed: 7, poll: 100ms, rate: 30, cycle: 10s, stopped: 3500ms, modulus: 256,
                scrap_every: 15, start_at: {start}, stop_at: {stop}}}
machines:
{machines}
"""

MACHINE = """  {code}:
    connection: {conn}
    counter: {{signal: count, unit: {unit}{width}}}
    waste:
      Scrap: {{signal: scrap, unit: {unit}{width}}}
    running: {{signal: running, unit: {unit}}}
    stop_reason:
      tag: {{signal: reason, unit: {unit}}}
      types: {{1: Maintenance, 2: Material shortage}}
      default: Stopped
"""

MACHINES = [("M1", "sim-a", "a"), ("M2", "sim-a", "b"), ("M3", "sim-b", "c")]


def _plc(config_path: Path, conn: str, unit: str) -> SimulatedPlc:
    cfg = load_config(config_path).connections[conn].config
    assert isinstance(cfg, SimulatedConnection)
    return SimulatedPlc(cfg, unit)


def _transitions(plc: SimulatedPlc, start: float, stop: float) -> list[tuple[int, str]]:
    """(running, type) as the agent reports them from `start` on: a stop if the machine is
    stopped when first seen, then every change; a start carries the type of the downtime it
    closes. Sampled every 10 ms."""
    state = plc.running(start)
    open_type = None if state else TYPES[plc.reason(start)]
    out: list[tuple[int, str]] = [] if state else [(0, TYPES[plc.reason(start)])]
    t = start
    while t < stop:
        t += 0.01
        now = plc.running(t)
        if now != state:
            if not now:
                open_type = TYPES[plc.reason(t)]
            assert open_type is not None
            out.append((1 if now else 0, open_type))
            state = now
    return out


def _safe_kill_time(t: float, downtime: float, resets: list[float]) -> float:
    """The first moment >= t whose kill window [t-0.5, t+downtime+2] holds no counter reset:
    an agent that sleeps through a reset cannot see the parts made just before it."""
    while any(t - 0.5 <= r <= t + downtime + 2.0 for r in resets):
        t += 0.25
    return t


def _readings(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("prodsmart_edge_readings_total{"))


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


@pytest.mark.timeout(170)
def test_kills_and_faults_lose_nothing_and_count_nothing_twice(tmp_path: Path) -> None:
    sandbox = start_sandbox()
    metrics_port = free_port()
    t0 = time.time()
    start, stop = t0 + 6.0, t0 + 50.0
    text = CONFIG.format(
        url=sandbox.url, db=tmp_path / "agent.db", metrics_port=metrics_port, reset=RESET_EVERY,
        start=start, stop=stop,
        machines="".join(
            MACHINE.format(code=c, conn=n, unit=u, width=", modulus: 256" if n == "sim-b" else "")
            for c, n, u in MACHINES))
    config = write_config(tmp_path / "agent.yaml", text)
    agent = AgentProcess(config, agent_env(sandbox))
    try:
        agent.start()
        # The first reading is a baseline: it must come before production starts.
        wait_until(lambda: _readings(metrics_port) > 0, 20, message="the agent's first readings")
        assert time.time() < start, "the agent took too long to start"
        plan: list[tuple[float, object]] = [
            (6.0, Fault(kind="status", status=503, count=4)),
            (9.0, "kill"),
            (13.0, Fault(kind="drop_after", count=3)),
            (17.0, "kill"),
            (20.0, Fault(kind="rate_limit", count=8, retry_after=1)),
            (24.0, Fault(kind="drop_before", count=3)),
            (27.0, "kill"),
            (30.0, Fault(kind="outage", seconds=10.0)),
            (35.0, "kill"),
            (43.0, Fault(kind="timeout", delay=2.0, apply=True, count=2)),
        ]
        resets: list[float] = []
        for _code, conn, unit in MACHINES:
            plc = _plc(config, conn, unit)
            boundaries = range(math.floor(t0 / RESET_EVERY), math.ceil(stop / RESET_EVERY) + 1)
            resets += [r for b in boundaries if (r := plc.last_reset(b * RESET_EVERY + 9.9)) is not None]
        kills: list[float] = []
        for offset, action in plan:
            if action == "kill":
                downtime = 0.8
                at = _safe_kill_time(t0 + offset, downtime, resets)
                _sleep_until(at)
                agent.kill()
                kills.append(time.time())
                time.sleep(downtime)
                agent.start()
            else:
                _sleep_until(t0 + offset)
                assert isinstance(action, Fault)
                sandbox.inject(action)
        _sleep_until(stop + 0.5)

        expected = {}
        for code, conn, unit in MACHINES:
            plc = _plc(config, conn, unit)
            expected[code] = (plc.produced(stop), plc.scrap(stop))
        assert all(count > 100 for count, _ in expected.values())

        def settled() -> bool:
            counters = sandbox.ledger().counters
            return all(
                counters.get(code, {}).get("count") == count
                and counters.get(code, {}).get("waste", {}).get("Scrap") == scrap
                for code, (count, scrap) in expected.items()
            )

        try:
            wait_until(settled, timeout=60, message=f"sandbox counters to reach {expected}")
        except AssertionError:
            debug = Path(tempfile.gettempdir()) / "prodsmart-edge-e2e"
            debug.mkdir(exist_ok=True)
            (debug / "ledger.json").write_text(json.dumps(sandbox.ledger().to_json()))
            (debug / "agent.yaml").write_text(text)
            (debug / "agent.log").write_text(agent.output())
            (debug / "kills.json").write_text(json.dumps(kills))
            raise AssertionError(f"(details in {debug}) expected {expected}, "
                                 f"sandbox has {sandbox.ledger().counters}\n"
                                 f"agent output:\n{agent.output()[-4000:]}") from None
        time.sleep(1.0)  # nothing more may arrive after the totals are reached
        ledger = sandbox.ledger()
        for code, (count, scrap) in expected.items():
            assert ledger.counters[code]["count"] == count
            assert ledger.counters[code]["waste"] == {"Scrap": scrap}

        # Every refusal as "not greater" is a retry of a call that had been applied already.
        accepted = {(a["machine"], repr(a["body"])) for a in ledger.accepted}
        for r in ledger.rejected:
            assert r["status"] in (400, 429, 401) or r["status"] >= 500, r
            if r["status"] == 400:
                assert "not greater" in r["reason"], r
                assert (r["machine"], repr(r["body"])) in accepted, r

        # Run states: the schedule's transitions, in order, with the right downtime types.
        for code, conn, unit in MACHINES:
            plc = _plc(config, conn, unit)
            full = _transitions(plc, t0, stop)
            must = _transitions(plc, t0 + 5.0, stop)
            got = [(int(r["running"]), r["type"]) for r in ledger.runs[code]]
            assert got == full[len(full) - len(got):], (code, got, full)
            assert len(got) >= len(must), (code, got, must)
        assert agent.starts == 5
    finally:
        agent.close()
        sandbox.stop()
