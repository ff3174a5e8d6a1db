"""`prodsmart-edge probe mqtt` against a real Mosquitto broker."""

from __future__ import annotations

import argparse
import io

from agent.config.loader import parse_config
from agent.config.specs import AgentConfig
from agent.probe import mqtt as probe
from tests.conftest import free_port
from tests.support.fixtures_mqtt import Mosquitto, Publisher, Recorder, line, mosquitto, running, until

__all__ = ["mosquitto"]  # the fixture

MACHINES = """
  PACK-03:
    connection: broker
    counter: {topic: plant/line1/pack03/count, json: data.good, type: uint32}
    running: {topic: plant/line1/pack03/state, json: running}
    stop_reason: {tag: {topic: plant/line1/pack03/state, json: reason}}
  LABEL-04:
    connection: broker
    counter: {topic: plant/line1/label04/produced, json: qty, id: id, mode: delta}
"""


def _config(port: int) -> AgentConfig:
    return parse_config(f"connections:\n  broker:\n    mqtt: {{host: 127.0.0.1, port: {port}}}\n"
                        f"machines:\n{MACHINES}")


async def _probe(*argv: str, config: AgentConfig | None = None) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--machine")
    probe.add_arguments(parser)
    out = io.StringIO()
    code = await probe.run(parser.parse_args(list(argv)), config, out)
    return code, out.getvalue()


def _publish_retained(port: int) -> None:
    pub = Publisher(port)
    pub.many([("plant/line1/pack03/count", '{"data": {"good": 1500}}'),
              ("plant/line1/pack03/state", '{"running": false, "reason": 2}'),
              ("plant/line1/label04/produced", '{"qty": "lots", "id": 9}')], retain=True)
    pub.close()


async def test_configured_topics_are_shown_per_machine_role(mosquitto: Mosquitto) -> None:
    _publish_retained(mosquitto.port)
    code, text = await _probe("--seconds", "3", "--messages", "3", config=_config(mosquitto.port))
    assert code == 0, text
    assert f"Connected to 127.0.0.1:{mosquitto.port} (MQTT 3.1.1) as prodsmart-edge-probe-" in text
    # Without the time column (continuation rows of the same message have none).
    rows = [" ".join(r.split()[0 if r.startswith(" ") else 1:]) for r in text.splitlines()[2:]]
    assert "plant/line1/pack03/count PACK-03 counter 1500 retained" in rows
    assert "plant/line1/pack03/state PACK-03 running False retained" in rows
    assert "PACK-03 stop_reason 2 retained" in rows
    assert ("plant/line1/label04/produced LABEL-04 counter - retained; unusable: 'lots' is not a number, and "
            "a counter needs one") in rows


async def test_one_machine_only(mosquitto: Mosquitto) -> None:
    _publish_retained(mosquitto.port)
    code, text = await _probe("--machine", "LABEL-04", "--seconds", "1", config=_config(mosquitto.port))
    assert code == 0 and "LABEL-04 counter" in text and "PACK-03" not in text


async def test_raw_topics_with_a_json_path(mosquitto: Mosquitto) -> None:
    _publish_retained(mosquitto.port)
    code, text = await _probe("--host", "127.0.0.1", "--port", str(mosquitto.port),
                              "--topic", "plant/+/pack03/#", "--json", "data.good", "--seconds", "2",
                              "--messages", "2")
    assert code == 0, text
    count = next(r for r in text.splitlines() if "pack03/count" in r)
    assert "(payload)" in count and " 1500 " in count and "payload b'{\"data\": {\"good\": 1500}}'" in count
    state = next(r for r in text.splitlines() if "pack03/state" in r)
    assert "unusable: the JSON has no 'data.good'" in state


async def test_the_probe_leaves_the_agents_session_alone(mosquitto: Mosquitto) -> None:
    rec = Recorder()
    async with running(line(mosquitto.port, MACHINES).source(rec)):
        await until(lambda: rec.up)
        code, _ = await _probe("--seconds", "0.5", config=_config(mosquitto.port))
        assert code == 0
        pub = Publisher(mosquitto.port)
        pub.publish("plant/line1/pack03/count", '{"data": {"good": 7}}')
        pub.close()
        await until(lambda: rec.readings)
    assert rec.states == [(True, "")]  # never kicked off the broker by the probe


async def test_problems_are_reported_plainly() -> None:
    port = free_port()
    code, text = await _probe("--host", "127.0.0.1", "--port", str(port), "--seconds", "1")
    assert code == 1
    assert text.strip() == f"Cannot reach the MQTT broker at 127.0.0.1:{port} (Connection refused)"
    code, text = await _probe("--seconds", "1")
    assert code == 2 and "give --host" in text
    code, text = await _probe("--host", "h", "--topic", "a/#/b")
    assert code == 2 and "--topic a/#/b: '#' must be a whole level" in text
    code, text = await _probe("--machine", "NOPE", config=_config(port))
    assert code == 2 and "no machine 'NOPE'" in text


def test_the_cli_wiring_keeps_its_protocol_argument() -> None:
    from agent.cli.main import _parser

    argv = ["probe", "mqtt", "--host", "h", "--protocol", "5"]
    args = _parser(argv).parse_args(argv)
    assert (args.protocol, args.mqtt_protocol, args.host) == ("mqtt", "5", "h")
