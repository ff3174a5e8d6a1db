"""End to end: wall-clock steps of the agent process (NTP, a line PC booting with a flat RTC battery).

libfaketime moves the agent's wall clock (not its monotonic clock, like a real step) by
rewriting the offset file while it runs; the PLC and the sandbox keep real time. The logic
used to measure debounce, idle and max_rate on the wall clock: a step back stalled a stop for
hours and made max_rate refuse real parts; a step forward sent a false idle stop.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Callable
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

CONFIG = AGENT_PROLOGUE + """\
connections:
  press-plc:
    modbus: {{host: 127.0.0.1, port: {port}, poll: 100ms, timeout: 500ms, retry_max: 1s}}
machines:
  PRESS-01:
    connection: press-plc
    counter: {{holding: 100, type: uint32, max_rate: 100}}
    running: {{coil: 1}}
    min_duration: 2s
    idle_after: 30s
"""


def faketime_env(sandbox: Sandbox, offset_file: Path) -> dict[str, str]:
    """The agent's environment with libfaketime reading its offset from `offset_file` at every call."""
    libs = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    assert libs, "libfaketime is missing: apt-get install faketime"
    return agent_env(sandbox, {"LD_PRELOAD": libs[0], "FAKETIME_TIMESTAMP_FILE": str(offset_file),
                               "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})


@pytest.mark.timeout(120)
def test_clock_steps_both_ways_change_no_count_and_no_stop(modbus_server: Callable[..., ModbusServer],
                                                            tmp_path: Path) -> None:
    sandbox = start_sandbox()
    plc = modbus_server()
    plc.set_value(1, "holding", 100, 1000, "uint32")
    plc.set(1, "coil", 1, [True])
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    config = write_config(tmp_path / "agent.yaml", CONFIG.format(
        url=sandbox.url, db=tmp_path / "agent.db", metrics_port=free_port(), port=plc.port))
    agent = AgentProcess(config, faketime_env(sandbox, offset))
    count = lambda: sandbox.ledger().counters.get("PRESS-01", {}).get("count")  # noqa: E731
    runs = lambda: [(int(r["running"]), r["type"]) for r in sandbox.ledger().runs.get("PRESS-01", [])]  # noqa: E731
    try:
        agent.start()
        wait_until(lambda: "Connection press-plc is up" in agent.output(), 20, message="the PLC connection")
        time.sleep(3.0)  # running for longer than min_duration: the idle clock runs
        plc.set_value(1, "holding", 100, 1040, "uint32")
        wait_until(lambda: count() == 40, 20, message="40 parts")
        # A step forward of an hour: no false "No production" stop (idle_after is 30 s).
        offset.write_text("+3600\n")
        time.sleep(2.0)
        plc.set_value(1, "holding", 100, 1060, "uint32")
        wait_until(lambda: count() == 60, 20, message="60 parts")
        assert runs() == [], f"a false stop: {runs()}"
        # The machine stops; the clock steps back two hours inside min_duration: the stop still
        # goes out about 2 s later (not in two hours).
        plc.set(1, "coil", 1, [False])
        time.sleep(0.5)
        offset.write_text("-3600\n")
        wait_until(lambda: runs() == [(0, "Stopped")], 10, message=f"the stop; output:\n{agent.output()}")
        # The PLC is unreachable for 3 s and makes 200 parts (max_rate 100/s allows them); the
        # clock steps back again meanwhile: the parts are real and must all count.
        plc.stop()
        time.sleep(1.0)
        offset.write_text("-7200\n")
        time.sleep(2.0)
        plc.set_value(1, "holding", 100, 1260, "uint32")
        plc.set(1, "coil", 1, [True])
        plc.start()
        wait_until(lambda: count() == 260, 20, message=f"260 parts; output:\n{agent.output()}")
        wait_until(lambda: runs() == [(0, "Stopped"), (1, "Stopped")], 10, message="the start")
        time.sleep(1.0)
        assert count() == 260 and runs() == [(0, "Stopped"), (1, "Stopped")]
        assert "jump refused" not in agent.output()
        assert agent.terminate() == 0
    finally:
        agent.close()
        sandbox.stop()
