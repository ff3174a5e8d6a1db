"""End to end: a logic state that cannot be used (state_invalid) resumes from what Prodsmart acknowledged.

Counts used to restart from 0, below the acknowledged count, and were dropped as "already
held" until they passed it: every part made meanwhile was lost.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

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

CONFIG = AGENT_PROLOGUE + """\
connections:
  press-plc:
    modbus: {{host: 127.0.0.1, port: {port}, poll: 100ms, timeout: 300ms, retry_max: 500ms}}
machines:
  PRESS-01:
    connection: press-plc
    counter: {{holding: 100, type: uint32}}
    waste:
      Scrap: {{holding: 102, type: uint32}}
"""


@pytest.mark.timeout(90)
def test_an_unusable_state_resumes_from_the_acknowledged_count(modbus_server: Callable[..., ModbusServer],
                                                              tmp_path: Path) -> None:
    sandbox = start_sandbox()
    plc = modbus_server()
    plc.set_value(1, "holding", 100, 1000, "uint32")
    plc.set_value(1, "holding", 102, 50, "uint32")
    db = tmp_path / "agent.db"
    config = write_config(tmp_path / "agent.yaml", CONFIG.format(
        url=sandbox.url, db=db, metrics_port=free_port(), port=plc.port))
    agent = AgentProcess(config, agent_env(sandbox))
    ledger = lambda: sandbox.ledger().counters.get("PRESS-01", {})  # noqa: E731
    try:
        agent.start()
        wait_until(lambda: "Connection press-plc is up" in agent.output(), 20, message="the PLC connection")
        time.sleep(0.5)
        plc.set_value(1, "holding", 100, 1040, "uint32")
        plc.set_value(1, "holding", 102, 53, "uint32")
        wait_until(lambda: ledger() == {"count": 40, "waste": {"Scrap": 3}}, 20, message="40 parts, 3 scrap")
        assert agent.terminate() == 0
        with sqlite3.connect(db) as con:  # the saved state is damaged (a bug, a hand edit...)
            con.execute("UPDATE state SET data = ?", (json.dumps({"v": 1, "counters": {
                "count": {"total": "forty"}, "waste:Scrap": None}}),))
        agent.start()
        wait_until(lambda: agent.output().count("Connection press-plc is up") == 2, 20, message="restart")
        time.sleep(0.5)  # the first reading is a new baseline
        plc.set_value(1, "holding", 100, 1060, "uint32")
        plc.set_value(1, "holding", 102, 55, "uint32")
        wait_until(lambda: ledger() == {"count": 60, "waste": {"Scrap": 5}}, 20,
                   message="20 more parts and 2 more scrap on top of the acknowledged ones")
    finally:
        agent.close()
        sandbox.stop()
