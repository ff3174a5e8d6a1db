"""End to end: an ordinary plant day at once, with the ledger exact.

Two Modbus PLC processes, the agent process under libfaketime, the sandbox. While the lines
produce: SIGHUP reloads every 3 s, a machine moved to the other PLC (the wiring was swapped),
the wall clock stepped forward an hour, back two, and back to true time, an int16 counter
through several wraps, stops and starts with min_duration, and `status` run beside the agent
every 2 s. The sandbox must end with exactly the parts and run states the test produced.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.e2e.test_clock import faketime_env
from tests.support.fixtures_modbus import ModbusServer, modbus_server
from tests.support.harness import AGENT_PROLOGUE, ROOT, AgentProcess, start_sandbox, wait_until, write_config

__all__ = ["modbus_server"]

CONFIG = AGENT_PROLOGUE + """\
connections:
  plc-a: {{modbus: {{host: 127.0.0.1, port: {port_a}, poll: 100ms, timeout: 500ms, retry_max: 1s}}}}
  plc-b: {{modbus: {{host: 127.0.0.1, port: {port_b}, poll: 100ms, timeout: 500ms, retry_max: 1s}}}}
machines:
  PRESS-01:
    connection: plc-a
    counter: {{holding: 100, type: int16}}      # wraps through its sign every 65536 parts
    running: {{coil: 1}}
    min_duration: {debounce}
  PACK-02:
    connection: {pack}
    counter: {{holding: 200, type: uint32}}
"""

TICK = 0.2
PRESS_STEP = 2000  # parts per tick while running: a wrap every ~6.5 s
PACK_STEP = 7


def _int16(total: int) -> int:
    raw = total % 65536
    return raw - 65536 if raw >= 32768 else raw


@pytest.mark.timeout(170)
def test_a_plant_day_reloads_move_clock_steps_wraps_and_status_ledger_exact(
        modbus_server: Callable[..., ModbusServer], tmp_path: Path) -> None:
    sandbox = start_sandbox()
    plc_a, plc_b = modbus_server(), modbus_server()
    press_raw, pack_raw, pack_b_raw = 31000, 1000, 500_000
    plc_a.set_value(1, "holding", 100, _int16(press_raw), "int16")
    plc_a.set(1, "coil", 1, [True])
    plc_a.set_value(1, "holding", 200, pack_raw, "uint32")
    plc_b.set_value(1, "holding", 200, pack_b_raw, "uint32")
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    base = {"url": sandbox.url, "db": tmp_path / "agent.db", "metrics_port": free_port(),
            "port_a": plc_a.port, "port_b": plc_b.port}
    path = tmp_path / "agent.yaml"

    def configure(debounce: str, pack: str) -> None:
        write_config(path, CONFIG.format(debounce=debounce, pack=pack, **base))

    configure("1s", "plc-a")
    env = faketime_env(sandbox, offset)
    agent = AgentProcess(path, env)
    reloads = 0
    statuses: list[subprocess.Popen[bytes]] = []
    press, pack = 0, 0  # the truth: parts made after the agent's first reading
    running, pack_on = True, "plc-a"
    try:
        agent.start()
        wait_until(lambda: "Connection plc-a is up" in agent.output(), 20, message="the PLC connection")
        time.sleep(1.5)  # the baselines are read; the machine runs for longer than min_duration

        def reload(pack_conn: str, tick: int) -> None:
            nonlocal reloads
            configure("1s" if tick % 2 else "1200ms", pack_conn)
            agent.signal(signal.SIGHUP)
            reloads += 1
            wait_until(lambda: agent.output().count("Configuration reloaded") == reloads, 10,
                       message=f"reload {reloads}; output:\n{agent.output()[-3000:]}")

        for tick in range(175):
            if running:
                press_raw += PRESS_STEP
                press += PRESS_STEP
                plc_a.set_value(1, "holding", 100, _int16(press_raw), "int16")
            if pack_on == "plc-a":
                pack_raw += PACK_STEP
                plc_a.set_value(1, "holding", 200, pack_raw, "uint32")
            else:
                pack_b_raw += PACK_STEP
                plc_b.set_value(1, "holding", 200, pack_b_raw, "uint32")
            pack += PACK_STEP
            if tick in (40, 120):
                plc_a.set(1, "coil", 1, [False])
                running = False
            if tick in (60, 140):
                plc_a.set(1, "coil", 1, [True])
                running = True
            if tick == 30:
                offset.write_text("+3600\n")
            if tick == 90:
                offset.write_text("-3600\n")
            if tick == 150:
                offset.write_text("+0\n")
            if tick == 80:
                # The wiring was swapped: PACK-02 really is on PLC B. Its counter there does not
                # move until the agent has read it (the first reading is the new baseline); the
                # agent reads PLC A's last value before the move.
                time.sleep(0.5)
                reload("plc-b", tick)
                time.sleep(1.0)
                pack_on = "plc-b"
            elif tick % 15 == 7:
                reload(pack_on, tick)
            if tick % 10 == 0:
                statuses.append(subprocess.Popen([sys.executable, "-m", "agent", "status", str(path)],
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                 env=env, cwd=ROOT))
            time.sleep(TICK)
        assert press > 4 * 65536, "the int16 counter wrapped several times"
        expected = {"PRESS-01": press, "PACK-02": pack}

        def counts() -> dict[str, object]:
            c = sandbox.ledger().counters
            return {m: c.get(m, {}).get("count") for m in expected}

        try:
            wait_until(lambda: counts() == expected, 30, message=f"the counts {expected}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; sandbox {counts()}; output:\n{agent.output()[-5000:]}") from None
        truth = [(0, "Stopped"), (1, "Stopped"), (0, "Stopped"), (1, "Stopped")]
        runs = lambda: [(int(r["running"]), r["type"]) for r in sandbox.ledger().runs.get("PRESS-01", [])]  # noqa: E731
        wait_until(lambda: runs() == truth, 10, message="the run states")
        time.sleep(1.0)  # nothing more may arrive
        assert counts() == expected and runs() == truth
        ledger = sandbox.ledger()
        assert not [r for r in ledger.rejected if r["status"] == 400], ledger.rejected
        assert not ledger.runs.get("PACK-02")
        for proc in statuses:
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err.decode()
        assert reloads >= 12 and agent.running
        assert agent.terminate() == 0
        assert "Traceback" not in agent.output()
    finally:
        for proc in statuses:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        agent.close()
        sandbox.stop()
