"""No input stops the pipeline: arbitrary payloads on every MQTT role, arbitrary register words on every
Modbus type, through the real decoders, the machine logic and a real SQLite outbox.

The property: the pipeline survives every value, and what other machines counted meanwhile is
committed exactly. Regressions first: `{"qty": 1e30}` on a delta counter and a float32 counter
register at FLT_MAX made the SQLite insert raise, which ended the agent.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config.loader import parse_config
from agent.config.specs import AgentConfig
from agent.core.metrics import Metrics
from agent.core.model import Quality, Reading
from agent.logic.machine import Logic
from agent.outbox.store import Outbox
from agent.runtime.pipeline import Pipeline
from agent.sources.modbus.config import ModbusTag
from agent.sources.modbus.decode import NUMERIC_TYPES, Codec, finite
from agent.sources.mqtt.config import MqttTag
from agent.sources.mqtt.payload import Decoder, PayloadError

MQTT_TYPES = [None, "uint16", "int16", "uint32", "int64", "float", "bool", "string"]


def _mqtt_machine(code: str, type_name: str | None) -> str:
    t = f", type: {type_name}" if type_name else ""
    counter_t = t if type_name not in ("bool", "string") else ""
    return f"""
  {code}:
    connection: broker
    counter: {{topic: {code}/count, json: v{counter_t}}}
    waste:
      Scrap: {{topic: {code}/delta, json: v, id: i, mode: delta{counter_t}}}
    running: {{topic: {code}/run, json: v{t}}}
    stop_reason: {{tag: {{topic: {code}/reason, json: v{t}}}, types: {{"1": Maintenance}}}}
    min_duration: 1s
    parameters:
      temp: {{topic: {code}/temp, json: v{t}, min_interval: 0s}}
"""


PROLOGUE = "connections:\n  {conn}\n  ok: {{simulated: {{}}}}\nmachines:\n"
OK = "  OK: {connection: ok, counter: {signal: count}}\n"
MQTT_CONFIG = PROLOGUE.format(conn="broker: {mqtt: {host: 127.0.0.1}}") + "".join(
    _mqtt_machine(f"M{i}", t) for i, t in enumerate(MQTT_TYPES)
) + OK


def _modbus_machine(code: str, type_name: str, base: int) -> str:
    return f"""
  {code}:
    connection: plc
    counter: {{holding: {base}, type: {type_name}}}
    waste:
      Scrap: {{holding: {base + 4}, type: {type_name}, mode: delta}}
    running: {{holding: {base + 8}, type: {type_name}}}
    stop_reason: {{tag: {{holding: {base + 12}, type: {type_name}}}}}
    idle_after: 1s
    parameters:
      temp: {{holding: {base + 16}, type: {type_name}, scale: 0.1}}
"""


MODBUS_CONFIG = PROLOGUE.format(conn="plc: {modbus: {host: 127.0.0.1}}") + "".join(
    _modbus_machine(f"R{i}", t, 20 * i) for i, t in enumerate(NUMERIC_TYPES)
) + OK

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from([1e30, -1e30, 2**63, 2**64, 2**53 + 1, -(2**63), 3.4028234663852886e38, "1e999", "-0"]),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=3), kids, max_size=3),
    max_leaves=6,
)


async def _through_pipeline(cfg: AgentConfig, steps: Sequence[Sequence[Reading]], folder: str) -> None:
    """Feed each step with one good increment of machine OK; the pipeline must stay up and
    commit OK's total exactly; no total stored may exceed what SQLite can hold."""
    spec = cfg.machines["OK"].counter
    assert spec is not None
    outbox = await Outbox.open(str(Path(folder) / "agent.db"))
    logic = Logic(cfg.machines, {})
    pipeline = Pipeline(logic, outbox, Metrics(), commit_interval=0.01, on_commit=lambda: None)
    task = asyncio.create_task(pipeline.run())
    try:
        await pipeline.emit([Reading("ok", spec.tag, 1000)], durable=True)
        for i, readings in enumerate(steps, 1):
            good = Reading("ok", spec.tag, 1000 + i)
            await asyncio.wait_for(pipeline.emit([*readings, good], durable=True), 10)
            assert not task.done()
        counts = [c.body["count"] for c in await outbox.queued("OK") if c.kind == "counter"]
        assert counts[-1:] == ([len(steps)] if steps else [])
        for state in (await outbox.load_states()).values():
            for counter in state["counters"].values():
                assert 0 <= counter["total"] < 2**63
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.close()


def _run(cfg: AgentConfig, steps: Sequence[Sequence[Reading]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(_through_pipeline(cfg, steps, folder))


def _mqtt_readings(cfg: AgentConfig, payloads: dict[str, bytes]) -> list[Reading]:
    """What the MQTT source makes of each payload (a PayloadError is counted and dropped there)."""
    out = []
    for key, binding in cfg.connections["broker"].tags.items():
        spec = binding.spec
        assert isinstance(spec, MqttTag)
        payload = payloads.get(spec.topic)
        if payload is None:
            continue
        counter = bool({"counter", "waste"} & set(binding.roles))
        decoder = Decoder(spec.json_path, spec.type, numeric=counter, id_path=spec.id,
                          time_path=spec.timestamp)
        try:
            decoded = decoder.decode(payload)
        except PayloadError:
            continue
        out.append(Reading("broker", key, decoded.value, Quality.GOOD, decoded.source_time, 0.0,
                           decoded.msg_id))
    return out


def _modbus_readings(cfg: AgentConfig, words: Sequence[int]) -> list[Reading]:
    """What the Modbus poller makes of these register words for every tag (NaN: a read error)."""
    out = []
    for key, binding in cfg.connections["plc"].tags.items():
        spec = binding.spec
        assert isinstance(spec, ModbusTag) and spec.type is not None
        codec = Codec(spec.type)
        value = codec.value(list(words[: codec.width]))
        if finite(value):
            out.append(Reading("plc", key, value))
        else:
            out.append(Reading("plc", key, None, Quality.BAD, error=f"not a number ({value})"))
    return out


# --------------------------------------------------------------------------- regressions


def test_an_increment_of_1e30_is_refused_and_the_rest_commits() -> None:
    cfg = parse_config(MQTT_CONFIG)
    payloads = {"M0/delta": b'{"v": 1e30, "i": "x"}', "M0/count": b'{"v": 1e30}'}
    _run(cfg, [_mqtt_readings(cfg, payloads), _mqtt_readings(cfg, {"M0/count": b'{"v": 5}'}),
               _mqtt_readings(cfg, {"M0/count": b'{"v": 18446744073709551616}'})])


def test_a_float_counter_register_at_flt_max_is_refused_and_the_rest_commits() -> None:
    cfg = parse_config(MODBUS_CONFIG)
    flt_max = [0x7F7F, 0xFFFF, 0x0000, 0x0000]
    _run(cfg, [_modbus_readings(cfg, [0, 0, 0, 0]), _modbus_readings(cfg, flt_max),
               _modbus_readings(cfg, [0x0000, 0x0001, 0, 0])])


def test_a_refused_value_counts_as_a_bad_reading_not_a_count() -> None:
    cfg = parse_config(MQTT_CONFIG)
    spec = cfg.machines["M0"].waste["Scrap"]
    logic = Logic(cfg.machines, {})
    assert logic.apply(Reading("broker", spec.tag, 1e30, msg_id="a"), 0.0) == []
    assert [n.kind for n in logic.drain_notices()] == ["bad_value"]
    assert logic.apply(Reading("broker", spec.tag, 2**53, msg_id="b"), 1.0) != []
    assert logic.apply(Reading("broker", spec.tag, 2**53 + 1, msg_id="c"), 2.0) == []


# --------------------------------------------------------------------------- properties

PAYLOAD = st.one_of(
    JSON.map(lambda v: json.dumps({"v": v, "i": "same"}).encode()),
    JSON.map(lambda v: json.dumps({"v": v}).encode()),
    st.binary(max_size=12),
)


@pytest.mark.timeout(300)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_arbitrary_json_on_every_mqtt_role_never_stops_the_pipeline(data: st.DataObject) -> None:
    cfg = parse_config(MQTT_CONFIG)
    topics = sorted({b.spec.topic for b in cfg.connections["broker"].tags.values()  # type: ignore[attr-defined]
                     })
    steps = data.draw(st.lists(st.dictionaries(st.sampled_from(topics), PAYLOAD, max_size=8), max_size=6))
    _run(cfg, [_mqtt_readings(cfg, payloads) for payloads in steps])


WORD = st.integers(0, 0xFFFF) | st.sampled_from([0x7F7F, 0x7F80, 0xFF80, 0x7FFF, 0x8000, 0xFFFF, 0])


@pytest.mark.timeout(300)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(WORD, min_size=4, max_size=4), max_size=8))
def test_arbitrary_register_words_on_every_modbus_type_never_stop_the_pipeline(
        steps: list[list[int]]) -> None:
    cfg = parse_config(MODBUS_CONFIG)
    _run(cfg, [_modbus_readings(cfg, words) for words in steps])


