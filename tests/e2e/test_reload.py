"""End to end: SIGHUP reloads during production, with debounced stops pending, change no count.

Reloads used to race the pipeline's commit loop: a debounced stop produced while the reload
awaited a commit was wiped or committed twice, and reload handling could hang so that a
SIGTERM went unanswered.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.sandbox import SandboxOptions
from tests.conftest import free_port
from tests.e2e.test_simulated import _plc, _readings, _sleep_until, _transitions
from tests.support.fixtures_modbus import ModbusServer, modbus_server
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
__all__ = ["modbus_server"]


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
        wait_until(lambda: "Connection sim is up" in agent.output(), 20, message="the simulated PLCs")
        assert time.time() < start, "the agent took too long to start"
        seen = time.time() + 0.5  # the run states before this moment may or may not have been observed
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

        full = {code: _transitions(_plc(path, "sim", unit), t0, stop) for code, unit in UNITS}
        must = {code: len(_transitions(_plc(path, "sim", unit), seen, stop)) for code, unit in UNITS}

        def exact() -> bool:
            """Every transition since the agent first read, in order, each once."""
            got = runs()
            return all(len(got[c]) >= must[c] and got[c] == full[c][len(full[c]) - len(got[c]):]
                       for c, _ in UNITS)

        try:
            wait_until(exact, timeout=10, message=f"run states {full}")
        except AssertionError as exc:
            ledger = sandbox.ledger()
            times = {c: [(round(r["time"] - t0, 2), r["running"], r["type"][:4])
                         for r in ledger.runs.get(c, [])] for c, _ in UNITS}
            raise AssertionError(f"{exc}; must {must} seen {seen - t0:.2f}; sandbox {times}; "
                                 f"output:\n{agent.output()[:3000]}") from None
        time.sleep(1.0)  # nothing more may arrive
        assert exact() and counts() == expected
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


MOVE = AGENT_PROLOGUE + """\
connections:
  plc-a: {{modbus: {{host: 127.0.0.1, port: {port_a}, poll: 100ms, timeout: 500ms, retry_max: 1s}}}}
  plc-b: {{modbus: {{host: 127.0.0.1, port: {port_b}, poll: 100ms, timeout: 500ms, retry_max: 1s}}}}
machines:
  PRESS-01:
    connection: {connection}
    counter: {{holding: 100, type: uint32}}
"""


@pytest.mark.timeout(90)
def test_moving_a_machine_to_another_plc_starts_a_new_baseline(modbus_server: Callable[..., ModbusServer],
                                                               tmp_path: Path) -> None:
    """The wiring was swapped: the machine really is on the other PLC. Its counter there reads
    250000; comparing that with the old PLC's 1000 made 249,000 phantom parts."""
    sandbox = start_sandbox()
    plc_a, plc_b = modbus_server(), modbus_server()
    plc_a.set_value(1, "holding", 100, 1000, "uint32")
    plc_b.set_value(1, "holding", 100, 250_000, "uint32")
    base = {"url": sandbox.url, "db": tmp_path / "agent.db", "metrics_port": free_port(),
            "port_a": plc_a.port, "port_b": plc_b.port}
    path = write_config(tmp_path / "agent.yaml", MOVE.format(connection="plc-a", **base))
    agent = AgentProcess(path, agent_env(sandbox))
    count = lambda: sandbox.ledger().counters.get("PRESS-01", {}).get("count")  # noqa: E731
    try:
        agent.start()
        wait_until(lambda: _readings(int(str(base["metrics_port"]))) > 0, 20, message="first readings")
        plc_a.set_value(1, "holding", 100, 1040, "uint32")
        wait_until(lambda: count() == 40, timeout=20, message="40 parts on PLC A")
        write_config(path, MOVE.format(connection="plc-b", **base))
        agent.signal(signal.SIGHUP)
        wait_until(lambda: "Configuration reloaded" in agent.output(), timeout=10, message="the reload")
        time.sleep(1.0)
        plc_b.set_value(1, "holding", 100, 250_010, "uint32")
        wait_until(lambda: count() == 50, timeout=20,
                   message=f"10 more parts on PLC B (sandbox: {count()})")
        time.sleep(0.5)
        assert count() == 50
    finally:
        agent.close()
        sandbox.stop()
