"""End to end over MQTT: Mosquitto -> the agent as a separate process -> the Prodsmart sandbox.

The agent is SIGKILLed and the broker restarted while publishers go on: every message that
was published with QoS 1 (the publisher got its PUBACK) must end up counted exactly once.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support.fixtures_mqtt import Mosquitto, Publisher
from tests.support.harness import AgentProcess, agent_env, start_sandbox, wait_until, write_config

CONFIG = """
prodsmart:
  url: {url}
  requests_per_minute: 110
  timeout: 1s
  retry_min: 100ms
  retry_max: 1s
storage:
  path: {db}
  commit_interval: 100ms
metrics:
  listen: 127.0.0.1:{metrics}
connections:
  line-broker:
    mqtt: {{host: 127.0.0.1, port: {port}, client_id: e2e-agent, reconnect_min: 100ms, reconnect_max: 1s}}
machines:
  PACK-03:
    connection: line-broker
    counter: {{topic: plant/line1/pack03/count, json: data.counters.good, type: uint32}}
    waste:
      Scrap: {{topic: plant/line1/pack03/scrap, type: uint16}}
    running: {{topic: plant/line1/pack03/state, json: running}}
    stop_reason: {{tag: {{topic: plant/line1/pack03/state, json: reason}}, types: {{jam: Maintenance}},
                  default: Stopped}}
  LABEL-04:
    connection: line-broker
    counter: {{topic: plant/line1/label04/produced, json: qty, mode: delta, id: id}}
    running: {{topic: plant/line1/label04/running}}
"""

COUNT, SCRAP, STATE = "plant/line1/pack03/count", "plant/line1/pack03/scrap", "plant/line1/pack03/state"
PRODUCED, LABEL_RUN = "plant/line1/label04/produced", "plant/line1/label04/running"


def total(n: int) -> tuple[str, str]:
    return COUNT, json.dumps({"data": {"counters": {"good": n}}})


def delta(qty: int, ident: str) -> tuple[str, str]:
    return PRODUCED, json.dumps({"qty": qty, "id": ident})


class Line:
    """The truth: what the publishers sent, so the expected Prodsmart counters are known."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.pack_total = 1000  # the first total is the baseline: nothing counted
        self.label = 0
        self.ids = 0

    def publish(self, items: list[tuple[str, str]]) -> None:
        pub = Publisher(self.broker.port, client_id=f"gateway-{time.monotonic_ns()}")
        try:
            pub.many(items)  # returns once the broker acknowledged every message
        finally:
            pub.close()

    def produce(self, rounds: int, duplicate_every: int = 4) -> None:
        items: list[tuple[str, str]] = []
        for _ in range(rounds):
            self.pack_total += 3
            self.ids += 1
            qty = 1 + self.ids % 3
            self.label += qty
            items += [total(self.pack_total), delta(qty, f"L{self.ids}")]
            if self.ids % duplicate_every == 0:
                items.append(delta(qty, f"L{self.ids}"))  # the gateway sent it twice
        self.publish(items)


def _healthz_seconds(port: int) -> float:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            answer.read()
    except urllib.error.HTTPError as exc:  # 503 is an answer too: the loop is responsive
        exc.close()
    return time.monotonic() - started


@pytest.mark.timeout(120)
def test_mqtt_to_prodsmart_through_kills_broker_restarts_and_garbage(tmp_path: Path) -> None:
    sandbox = start_sandbox()
    broker = Mosquitto(tmp_path / "broker").start()
    metrics = free_port()
    config = write_config(tmp_path / "agent.yaml", CONFIG.format(
        url=sandbox.url, db=tmp_path / "agent.db", metrics=metrics, port=broker.port))
    agent = AgentProcess(config, agent_env(sandbox))
    line = Line(broker)
    try:
        agent.start()
        wait_until(lambda: "Connection line-broker is up" in agent.output(), timeout=20,
                   message="the MQTT connection")
        line.publish([total(line.pack_total), (SCRAP, "7"), (STATE, '{"running": true, "reason": 0}'),
                      (LABEL_RUN, "RUN")])
        line.produce(20)
        line.publish([(SCRAP, "9"), (STATE, '{"running": false, "reason": "jam"}'), (LABEL_RUN, "off")])

        def counts() -> dict[str, object]:
            c = sandbox.ledger().counters
            return {m: c.get(m, {}).get("count") for m in ("PACK-03", "LABEL-04")}

        wait_until(lambda: counts() == {"PACK-03": 60, "LABEL-04": line.label}, timeout=20,
                   message="the first counts")
        def stopped() -> bool:
            runs = sandbox.ledger().runs
            return ([(r["running"], r["type"]) for r in runs.get("PACK-03", [])][-1:] == [(0, "Maintenance")]
                    and [r["running"] for r in runs.get("LABEL-04", [])][-1:] == [0])

        wait_until(stopped, timeout=10, message="both machines stopped, PACK-03 for Maintenance")
        assert sandbox.ledger().counters["PACK-03"]["waste"] == {"Scrap": 2}

        # The agent dies mid-run; the gateway goes on publishing; the agent comes back.
        line.produce(30)
        agent.kill()
        line.produce(30)
        agent.start()
        ups = lambda: agent.output().count("Connection line-broker is up")  # noqa: E731
        wait_until(lambda: ups() == 2, timeout=20, message="the restarted agent's MQTT connection")
        line.produce(10)
        # The broker restarts mid-run (it keeps the agent's session on disk).
        broker.stop()
        broker.start()
        line.produce(30)
        wait_until(lambda: ups() == 3, timeout=20, message="the MQTT connection after the broker restart")
        # A flood of garbage: the agent stays responsive and the next good message counts.
        garbage = [(COUNT, "{not json"), (PRODUCED, '{"qty": "many"}'), (SCRAP, "-")] * 3000
        line.publish(garbage)
        assert _healthz_seconds(metrics) < 2.0
        line.produce(5)
        expected = {"PACK-03": line.pack_total - 1000, "LABEL-04": line.label}
        wait_until(lambda: counts() == expected, timeout=40, message=f"the counters to reach {expected}")
        time.sleep(1.0)  # nothing more may arrive: a duplicate would push a counter past the truth
        assert counts() == expected
        for r in sandbox.ledger().rejected:
            assert r["status"] != 400 or "not greater" in r["reason"], r
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        errors = [ln for ln in scraped.splitlines() if ln.startswith("prodsmart_edge_payload_errors_total")]
        assert errors and float(errors[0].split()[-1]) >= 9000, errors
    finally:
        agent.close()
        broker.stop()
        sandbox.stop()
