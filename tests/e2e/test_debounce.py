"""End to end: a stop still waiting out min_duration survives a SIGKILL of the agent.

The running topic is publish-on-change and not retained: once the broker had the agent's
acknowledgement, nothing would deliver that stop again. The debounce candidate used to live
in memory only, so a kill inside min_duration lost the stop for good.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support.fixtures_mqtt import Mosquitto, Publisher
from tests.support.harness import (
    AGENT_PROLOGUE,
    AgentProcess,
    agent_env,
    start_sandbox,
    wait_until,
    write_config,
)

CONFIG = AGENT_PROLOGUE + """\
connections:
  line-broker:
    mqtt: {{host: 127.0.0.1, port: {port}, client_id: debounce-agent, reconnect_min: 100ms}}
machines:
  PACK-03:
    connection: line-broker
    counter: {{topic: pack03/count}}
    running: {{topic: pack03/running}}
    min_duration: 3s
"""


@pytest.mark.timeout(90)
def test_a_sigkill_inside_min_duration_does_not_lose_the_stop(tmp_path: Path) -> None:
    sandbox = start_sandbox()
    broker = Mosquitto(tmp_path / "broker").start()
    config = write_config(tmp_path / "agent.yaml", CONFIG.format(
        url=sandbox.url, db=tmp_path / "agent.db", metrics_port=free_port(), port=broker.port))
    agent = AgentProcess(config, agent_env(sandbox))
    pub = Publisher(broker.port, client_id="gateway")
    try:
        agent.start()
        wait_until(lambda: "Connection line-broker is up" in agent.output(), timeout=20, message="MQTT up")
        pub.many([("pack03/count", "100"), ("pack03/running", "1")])
        time.sleep(3.5)
        pub.many([("pack03/count", "120")])
        wait_until(lambda: sandbox.ledger().counters.get("PACK-03", {}).get("count") == 20, timeout=20,
                   message="the first count")
        pub.many([("pack03/running", "0")])  # the machine stops: sent after 3 s...
        time.sleep(1.0)
        agent.kill()                           # ...but the agent dies inside those 3 s
        agent.start()
        wait_until(lambda: sandbox.ledger().runs.get("PACK-03"), timeout=20,
                   message=f"the stop after the restart; output:\n{agent.output()}")
        time.sleep(1.0)
        assert [int(r["running"]) for r in sandbox.ledger().runs["PACK-03"]] == [0]
    finally:
        pub.close()
        agent.close()
        broker.stop()
        sandbox.stop()
