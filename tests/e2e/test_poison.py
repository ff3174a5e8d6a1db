"""End to end: values no counter can hold (1e30 parts in one MQTT message) never stop the agent.

A poison value used to make the SQLite insert raise, the pipeline died, the agent exited 70,
systemd restarted it, the broker redelivered the unacknowledged message, and it died again.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support.fixtures_modbus import ModbusServer, modbus_server
from tests.support.fixtures_mqtt import Mosquitto, Publisher
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
  line-broker:
    mqtt: {{host: 127.0.0.1, port: {port}, client_id: poison-agent, reconnect_min: 100ms, reconnect_max: 1s}}
machines:
  LABEL-04:
    connection: line-broker
    counter: {{topic: plant/label04/produced, json: qty, mode: delta, id: id}}
  PACK-03:
    connection: line-broker
    counter: {{topic: plant/pack03/count, json: good}}
"""


def _bad_readings(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(float(m.group(1)) for m in
               re.finditer(r"^prodsmart_edge_bad_readings_total\{[^}]*\} (\S+)$", text, re.M))


@pytest.mark.timeout(90)
def test_a_poison_value_is_refused_and_everything_else_counts(tmp_path: Path) -> None:
    sandbox = start_sandbox()
    broker = Mosquitto(tmp_path / "broker").start()
    metrics = free_port()
    config = write_config(tmp_path / "agent.yaml", CONFIG.format(
        url=sandbox.url, db=tmp_path / "agent.db", metrics_port=metrics, port=broker.port))
    agent = AgentProcess(config, agent_env(sandbox))

    def publish(items: list[tuple[str, str]]) -> None:
        pub = Publisher(broker.port, client_id=f"gw-{time.monotonic_ns()}")
        try:
            pub.many(items)
        finally:
            pub.close()

    def counts() -> dict[str, object]:
        c = sandbox.ledger().counters
        return {m: c.get(m, {}).get("count") for m in ("LABEL-04", "PACK-03")}

    try:
        agent.start()
        wait_until(lambda: "Connection line-broker is up" in agent.output(), timeout=20, message="MQTT up")
        publish([("plant/pack03/count", '{"good": 100}'),
                 ("plant/label04/produced", json.dumps({"qty": 5, "id": "a1"}))])
        wait_until(lambda: counts()["LABEL-04"] == 5, timeout=20, message="the first delta")
        # Poison: an increment of 1e30, a total beyond 2^63, a total beyond 2^53.
        publish([("plant/label04/produced", '{"qty": 1e30, "id": "p1"}'),
                 ("plant/pack03/count", '{"good": 1e30}'),
                 ("plant/label04/produced", json.dumps({"qty": 2**64, "id": "p2"})),
                 ("plant/pack03/count", json.dumps({"good": 2**60})),
                 ("plant/label04/produced", json.dumps({"qty": 3, "id": "a2"})),
                 ("plant/pack03/count", '{"good": 140}')])
        wait_until(lambda: counts() == {"LABEL-04": 8, "PACK-03": 40}, timeout=20,
                   message=f"the good values counted (now {counts()}); output:\n{agent.output()}")
        assert agent.running, agent.output()
        assert _bad_readings(metrics) >= 4
        # Logged once per role, not per message.
        publish([("plant/label04/produced", '{"qty": 1e30, "id": "p3"}'),
                 ("plant/label04/produced", json.dumps({"qty": 2, "id": "a3"}))])
        wait_until(lambda: counts()["LABEL-04"] == 10, timeout=20, message="the next delta")
        time.sleep(0.5)
        assert counts() == {"LABEL-04": 10, "PACK-03": 40}
        assert agent.output().count("LABEL-04: count") <= 2, agent.output()
        assert agent.terminate() == 0
        assert "Traceback" not in agent.output(), agent.output()
    finally:
        agent.close()
        broker.stop()
        sandbox.stop()


MODBUS = AGENT_PROLOGUE + """\
connections:
  press-plc:
    modbus: {{host: 127.0.0.1, port: {port}, poll: 100ms, timeout: 500ms, retry_max: 1s}}
machines:
  PRESS-01:
    connection: press-plc
    counter: {{holding: 100, type: float32}}
  PRESS-02:
    connection: press-plc
    counter: {{holding: 110, type: uint16}}
"""


@pytest.mark.timeout(90)
def test_a_float_counter_register_at_flt_max_is_refused(modbus_server: Callable[..., ModbusServer],
                                                        tmp_path: Path) -> None:
    sandbox = start_sandbox()
    plc = modbus_server()
    plc.set_value(1, "holding", 100, 100.0, "float32")
    plc.set(1, "holding", 110, [500])
    config = write_config(tmp_path / "agent.yaml", MODBUS.format(
        url=sandbox.url, db=tmp_path / "agent.db", metrics_port=free_port(), port=plc.port))
    agent = AgentProcess(config, agent_env(sandbox))
    counts = lambda: {m: sandbox.ledger().counters.get(m, {}).get("count")  # noqa: E731
                      for m in ("PRESS-01", "PRESS-02")}
    try:
        agent.start()
        wait_until(lambda: "Connection press-plc is up" in agent.output(), 20, message="the PLC connection")
        time.sleep(0.5)
        plc.set_value(1, "holding", 100, 3.4028234663852886e38, "float32")  # FLT_MAX: a broken sensor
        time.sleep(0.5)
        plc.set_value(1, "holding", 100, 130.0, "float32")
        plc.set(1, "holding", 110, [520])
        wait_until(lambda: counts() == {"PRESS-01": 30, "PRESS-02": 20}, 20,
                   message=f"the good values counted; output:\n{agent.output()}")
        assert agent.running and agent.terminate() == 0
        assert "Traceback" not in agent.output()
    finally:
        agent.close()
        sandbox.stop()
