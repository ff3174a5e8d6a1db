"""End to end: SIGHUP reloads during production, with debounced stops pending, change no count.

Reloads used to race the pipeline's commit loop: a debounced stop produced while the reload
awaited a commit was wiped or committed twice, and reload handling could hang so that a
SIGTERM went unanswered.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from agent.sandbox import SandboxOptions
from tests.conftest import free_port
from tests.e2e.test_simulated import _plc, _readings, _sleep_until, _transitions
from tests.support.harness import (
    AGENT_PROLOGUE,
    AgentProcess,
    agent_env,
    start_sandbox,
    wait_until,
    write_config,
)

CONFIG = AGENT_PROLOGUE.replace("prodsmart:\n", "prodsmart:\n  requests_per_minute: 120\n") + """\
connections:
  sim:
    simulated: {{seed: 3, poll: 50ms, rate: 25, cycle: 6s, stopped: 2s, start_at: {start}, stop_at: {stop}}}
machines:
{machines}
"""

MACHINE = """  {code}:
    connection: sim
    counter: {{signal: count, unit: {unit}}}
    running: {{signal: running, unit: {unit}}}
    stop_reason:
      tag: {{signal: reason, unit: {unit}}}
      types: {{1: Maintenance, 2: Material shortage}}
    min_duration: {debounce}ms
"""

UNITS = [("M1", "a"), ("M2", "b")]
RELOADS = 50


def _config(path: Path, base: dict[str, object], debounce: int) -> Path:
    machines = "".join(MACHINE.format(code=c, unit=u, debounce=debounce) for c, u in UNITS)
    return write_config(path, CONFIG.format(machines=machines, **base))


@pytest.mark.timeout(150)
def test_fifty_reloads_during_production_change_no_count_and_sigterm_is_answered(tmp_path: Path) -> None:
    sandbox = start_sandbox(SandboxOptions(requests_per_minute=0))
    t0 = time.time()
    start, stop = t0 + 4.0, t0 + 34.0
    base: dict[str, object] = {"url": sandbox.url, "db": tmp_path / "agent.db", "metrics_port": free_port(),
                               "start": start, "stop": stop}
    path = _config(tmp_path / "agent.yaml", base, 400)
    agent = AgentProcess(path, agent_env(sandbox))
    try:
        agent.start()
        wait_until(lambda: _readings(int(str(base["metrics_port"]))) > 0, 20, message="first readings")
        assert time.time() < start, "the agent took too long to start"
        reloaded = lambda: agent.output().count("Configuration reloaded")  # noqa: E731
        for i in range(RELOADS):
            _config(path, base, 400 + 100 * (i % 2))
            agent.signal(signal.SIGHUP)
            wait_until(lambda i=i: reloaded() == i + 1, timeout=10,  # type: ignore[misc]
                       message=f"reload {i + 1} applied; output:\n{agent.output()[-3000:]}")
            time.sleep(0.25)
        _sleep_until(stop + 1.0)
        expected = {code: _plc(path, "sim", unit).produced(stop) for code, unit in UNITS}
        counts = lambda: {c: sandbox.ledger().counters.get(c, {}).get("count") for c, _ in UNITS}  # noqa: E731
        wait_until(lambda: counts() == expected,
                   timeout=30, message=f"counts {expected}")
        def runs() -> dict[str, list[tuple[int, str]]]:
            ledger = sandbox.ledger()
            return {c: [(int(r["running"]), r["type"]) for r in ledger.runs.get(c, [])] for c, _ in UNITS}

        truth = {code: _transitions(_plc(path, "sim", unit), t0, stop) for code, unit in UNITS}
        wait_until(lambda: runs() == truth, timeout=10, message=f"run states {truth}")
        time.sleep(1.0)  # nothing more may arrive
        assert runs() == truth and counts() == expected
        ledger = sandbox.ledger()
        assert not [r for r in ledger.rejected if r["status"] == 400], ledger.rejected
        assert not any(ledger.repeats.values()), ledger.repeats
        # SIGTERM in the middle of a reload is answered at once.
        agent.signal(signal.SIGHUP)
        asked = time.monotonic()
        agent.signal(signal.SIGTERM)
        assert agent.wait(10) == 0
        assert time.monotonic() - asked < 7.0
        assert "Traceback" not in agent.output()
    finally:
        agent.close()
        sandbox.stop()
