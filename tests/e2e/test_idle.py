"""End to end: no idle ("No production") stop while the counter cannot be read.

With the PLC unreachable for longer than `idle_after`, the agent used to send a false "No
production" stop, then book the outage's parts after the reconnection.
"""

from __future__ import annotations

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
    running: {{coil: 1}}
    idle_after: 3s
"""


@pytest.mark.timeout(90)
def test_no_idle_stop_while_the_plc_is_unreachable(modbus_server: Callable[..., ModbusServer],
                                                  tmp_path: Path) -> None:
    sandbox = start_sandbox()
    plc = modbus_server()
    plc.set_value(1, "holding", 100, 500, "uint32")
    plc.set(1, "coil", 1, [True])
    config = write_config(tmp_path / "agent.yaml", CONFIG.format(
        url=sandbox.url, db=tmp_path / "agent.db", metrics_port=free_port(), port=plc.port))
    agent = AgentProcess(config, agent_env(sandbox))
    count = lambda: sandbox.ledger().counters.get("PRESS-01", {}).get("count")  # noqa: E731
    runs = lambda: [(int(r["running"]), r["type"]) for r in sandbox.ledger().runs.get("PRESS-01", [])]  # noqa: E731
    try:
        agent.start()
        wait_until(lambda: "Connection press-plc is up" in agent.output(), 20, message="the PLC connection")
        for value in (510, 520, 530):
            time.sleep(1.0)
            plc.set_value(1, "holding", 100, value, "uint32")
        wait_until(lambda: count() == 30, 20, message="30 parts")
        plc.stop()                         # the network to the PLC is cut for 7 s; it goes on producing
        plc.set_value(1, "holding", 100, 600, "uint32")
        time.sleep(7.0)
        plc.start()
        for value in (610, 620):
            time.sleep(1.0)
            plc.set_value(1, "holding", 100, value, "uint32")
        wait_until(lambda: count() == 120, 20, message="120 parts")
        assert runs() == [], runs()
        # Real idleness is still seen: no count for 3 s while the PLC answers.
        wait_until(lambda: runs() == [(0, "No production")], 10, message="the idle stop")
        plc.set_value(1, "holding", 100, 625, "uint32")
        wait_until(lambda: runs() == [(0, "No production"), (1, "No production")], 10, message="the start")
        wait_until(lambda: count() == 125, 20, message="125 parts")
    finally:
        agent.close()
        sandbox.stop()
