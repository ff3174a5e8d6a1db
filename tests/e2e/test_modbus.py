"""End to end: a Modbus PLC (server process) -> the agent process -> the Prodsmart sandbox ledger.

A 16-bit counter wraps, is reset, and the PLC restarts mid-run; the sandbox must end with the
true number of parts, and the stop reason read from a holding register must arrive as its type.
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
from tests.support.fixtures_modbus import ModbusServer, modbus_server
from tests.support.harness import (
    AGENT_PROLOGUE,
    AgentProcess,
    agent_env,
    start_sandbox,
    wait_until,
    write_config,
)

__all__ = ["modbus_server"]

Start = Callable[..., ModbusServer]

CONFIG = AGENT_PROLOGUE + """\
connections:
  press-plc:
    modbus: {{host: 127.0.0.1, port: {port}, unit: 1, poll: 100ms, timeout: 500ms, retry_max: 1s}}
machines:
  PRESS-01:
    connection: press-plc
    counter: {{address: 40101, type: uint16}}                       # wraps at 65536
    waste:
      Scrap: {{holding: 102, type: uint32, word_order: little}}
    running: {{coil: 12}}
    stop_reason:
      tag: {{holding: 110}}
      types: {{1: Maintenance, 2: Material shortage}}
      default: Unplanned stop
    parameters:
      die_temperature: {{input: 30, type: float32, scale: 0.1}}
"""


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    box = start_sandbox()
    yield box
    box.stop()


@pytest.mark.timeout(120)
def test_wrap_reset_and_plc_restart_end_as_the_right_total(modbus_server: Start, sandbox: Sandbox,
                                                          tmp_path: Path) -> None:
    plc = modbus_server()
    plc.set(1, "holding", 100, [65000])
    plc.set(1, "coil", 12, [True])
    plc.set_value(1, "input", 30, 1805.0, "float32")
    metrics_port = free_port()
    text = CONFIG.format(url=sandbox.url, db=tmp_path / "agent.db", metrics_port=metrics_port, port=plc.port)
    agent = AgentProcess(write_config(tmp_path / "agent.yaml", text), agent_env(sandbox))

    def readings() -> float:
        """Readings the agent took from the PLC so far (its Prometheus endpoint)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as answer:
                text = answer.read().decode()
        except OSError:
            return 0.0
        match = re.search(r'^prodsmart_edge_readings_total\{connection="press-plc"\} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    def count() -> int | None:
        return sandbox.ledger().counters.get("PRESS-01", {}).get("count")

    def reach(total: int) -> None:
        wait_until(lambda: count() == total, timeout=20,
                   message=f"count {total} in the sandbox (now {count()}); agent output:\n{agent.output()}")

    try:
        agent.start()
        # The first reading is the baseline: 65000 counts nothing.
        wait_until(lambda: readings() > 0, timeout=30, message=f"a first reading; output:\n{agent.output()}")
        plc.set(1, "holding", 100, [65100])
        reach(100)
        plc.set(1, "holding", 100, [65500])
        reach(500)
        plc.set(1, "holding", 100, [200])  # wraps past 65535
        reach(736)
        plc.set(1, "holding", 100, [0])    # reset (shift change): confirmed by the next reading
        time.sleep(0.6)
        plc.set(1, "holding", 100, [40])
        reach(776)
        plc.set_value(1, "holding", 102, 3, "uint32", "CDAB")
        plc.set(1, "holding", 110, [2])
        plc.set(1, "coil", 12, [False])    # stop, for material shortage
        wait_until(lambda: sandbox.ledger().runs.get("PRESS-01"), timeout=20, message="a stop")
        plc.stop()                         # PLC power cycle: the agent must ride it out
        time.sleep(1.5)
        plc.set(1, "holding", 100, [50])
        plc.set(1, "coil", 12, [True])
        plc.start()
        reach(786)
        time.sleep(1.0)  # nothing more may arrive
        ledger = sandbox.ledger()
        assert ledger.counters["PRESS-01"]["count"] == 786
        assert ledger.counters["PRESS-01"]["waste"] == {"Scrap": 3}
        runs = [(int(r["running"]), r["type"]) for r in ledger.runs["PRESS-01"]]
        assert runs[-2:] == [(0, "Material shortage"), (1, "Material shortage")]
        assert agent.running
    finally:
        agent.close()
