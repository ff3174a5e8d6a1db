"""End to end: an OPC UA PLC (server process) -> the agent process -> the Prodsmart sandbox ledger.

A counter increases, a running flag toggles with a stop-reason enum, a float parameter changes,
and the PLC is killed and restarted mid-run with another namespace index; the sandbox must end
with the true number of parts and the stop with its type.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.sandbox import Sandbox
from tests.conftest import free_port
from tests.support.fixtures_opcua import NAMESPACE, OpcUaServer, opcua_server
from tests.support.harness import (
    AGENT_PROLOGUE,
    AgentProcess,
    agent_env,
    start_sandbox,
    wait_until,
    write_config,
)

__all__ = ["opcua_server"]

Start = Callable[..., OpcUaServer]

CONFIG = AGENT_PROLOGUE + """\
connections:
  oven-plc:
    opcua: {{url: "{plc}", sampling: 100ms, timeout: 2s, keepalive: 1s, stale_after: 3s, retry_max: 1s}}
machines:
  OVEN-01:
    connection: oven-plc
    counter: {{node: "nsu={ns};s=M1.Counter", type: uint32}}
    running: {{node: "nsu={ns};s=M1.Running"}}
    stop_reason:
      tag: {{node: "nsu={ns};s=M1.StopReason"}}
      types: {{1: Maintenance, 2: Material shortage}}
      default: Stopped
    parameters:
      temperature: {{node: "nsu={ns};s=M1.Temperature", deadband: 0.5}}
  OVEN-02:
    connection: oven-plc
    counter: {{path: "Objects/<{ns}>M2/<{ns}>Counter", type: uint32}}
"""


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    box = start_sandbox()
    yield box
    box.stop()


@pytest.mark.timeout(120)
def test_counts_states_and_parameters_reach_prodsmart_across_a_plc_restart(
        opcua_server: Start, sandbox: Sandbox, tmp_path: Path) -> None:
    plc = opcua_server()
    plc.set("M1.Counter", 100)
    plc.set("M1.Running", True)
    plc.set("M1.Temperature", 180.0)
    metrics_port = free_port()
    text = CONFIG.format(url=sandbox.url, db=tmp_path / "agent.db", metrics_port=metrics_port, plc=plc.url,
                         ns=NAMESPACE)
    agent = AgentProcess(write_config(tmp_path / "agent.yaml", text), agent_env(sandbox))

    def readings() -> float:
        """Readings the agent took from the PLC so far (its Prometheus endpoint)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as answer:
                text = answer.read().decode()
        except OSError:
            return 0.0
        match = re.search(r'^prodsmart_edge_readings_total\{connection="oven-plc"\} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    def count(machine: str) -> int | None:
        return sandbox.ledger().counters.get(machine, {}).get("count")

    def reach(machine: str, total: int) -> None:
        wait_until(lambda: count(machine) == total, timeout=20,
                   message=f"{machine} count {total} in the sandbox (now {count(machine)}); agent output:\n"
                           f"{agent.output()}")

    try:
        agent.start()
        # The first readings are the baseline: 100 counts nothing.
        wait_until(lambda: readings() >= 5, timeout=30, message=f"first readings; output:\n{agent.output()}")
        for value in range(101, 111):
            plc.set("M1.Counter", value)
        reach("OVEN-01", 10)
        plc.set("M2.Counter", 7)
        reach("OVEN-02", 7)
        plc.set("M1.Temperature", 185.5)
        plc.set("M1.StopReason", 2)
        plc.set("M1.Running", False)       # a stop, for material shortage
        wait_until(lambda: sandbox.ledger().runs.get("OVEN-01"), timeout=20, message="a stop")
        plc.stop()                         # PLC power cycle, and its program now numbers namespaces anew
        time.sleep(1.0)
        plc.set("M1.Counter", 125)         # produced while the agent could not see it
        plc.set("M1.Running", True)
        plc.start(shift=1)
        reach("OVEN-01", 25)
        plc.set("M1.Counter", 130)
        plc.set("M2.Counter", 9)
        reach("OVEN-01", 30)
        reach("OVEN-02", 9)
        time.sleep(1.0)  # nothing more may arrive
        ledger = sandbox.ledger()
        assert ledger.counters["OVEN-01"]["count"] == 30
        assert ledger.counters["OVEN-02"]["count"] == 9
        runs = [(int(r["running"]), r["type"]) for r in ledger.runs["OVEN-01"]]
        assert runs == [(0, "Material shortage"), (1, "Material shortage")]
        assert ledger.parameters["OVEN-01"]["temperature"] == 185.5
        assert agent.running
        assert "Traceback" not in agent.output()
    finally:
        agent.close()
