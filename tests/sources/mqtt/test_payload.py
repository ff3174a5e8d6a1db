"""MQTT payload decoding, topic matching and the MQTT parts of the configuration (no broker)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config.loader import parse_config
from agent.config.problems import ConfigError
from agent.sources.mqtt.config import MqttConnection, MqttTag
from agent.sources.mqtt.payload import Decoded, Decoder, PayloadError, parse_path, parse_time
from agent.sources.mqtt.topics import Router, filter_problem, matches


@pytest.mark.parametrize(("payload", "value"), [
    (b"42", 42), (b" 17\n", 17), (b"-3", -3), (b"1.5", 1.5), (b"2e3", 2000.0),
    (b"true", True), (b"ON", True), (b"RUN", True), (b"Running", True), (b"yes", True),
    (b"false", False), (b"off", False), (b"STOP", False), (b"stopped", False), (b"no", False),
    (b"Maintenance", "Maintenance"), (b"", ""),
])
def test_plain_payloads_in_automatic_mode(payload: bytes, value: object) -> None:
    decoded = Decoder(None, None).decode(payload)
    assert decoded.value == value and type(decoded.value) is type(value)


@pytest.mark.parametrize(("payload", "path", "value"), [
    (b'{"count": 12}', "count", 12),
    (b'{"data": {"counters": {"good": 7}}}', "data.counters.good", 7),
    (b'{"items": [{"qty": 1}, {"qty": 3}]}', "items[1].qty", 3),
    (b'{"items": [{"qty": 1}, {"qty": 3}]}', "items.1.qty", 3),
    (b'{"running": true}', "running", True),
    (b'{"state": "RUN"}', "state", True),
    (b'{"count": "15"}', "count", 15),
    (b'{"reason": "Material shortage"}', "reason", "Material shortage"),
])
def test_json_paths(payload: bytes, path: str, value: object) -> None:
    assert Decoder(path, None).decode(payload).value == value


@pytest.mark.parametrize(("payload", "path", "numeric", "type_name", "problem"), [
    (b"abc", None, True, None, "not a number, and a counter needs one"),
    (b"true", None, True, None, "not a number"),
    (b"nan", None, True, None, "not a number"),
    (b"1e400", None, False, None, "not a usable number"),
    (b"\xff\xfe", None, False, None, "not UTF-8"),
    (b"{broken", "count", False, None, "not JSON"),
    (b'{"count": 1}', "qty", False, None, "no 'qty'"),
    (b'{"data": {"good": 1}}', "data", False, None, "holds an object or a list"),
    (b'{"count": null}', "count", False, None, "holds null"),
    (b'{"count": NaN}', "count", False, None, "not a usable number"),
    (b"70000", None, True, "uint16", "out of the uint16 range 0..65535"),
    (b"-1", None, True, "uint32", "out of the uint32 range"),
    (b"2.5", None, True, "uint32", "not a whole number"),
    (b"maybe", None, False, "bool", "not a boolean"),
    (b"7", None, False, "bool", "not a boolean"),
    (b"x" * 70000, None, False, None, "more than 65536"),
])
def test_unusable_payloads_say_why(payload: bytes, path: str | None, numeric: bool, type_name: str | None,
                                   problem: str) -> None:
    with pytest.raises(PayloadError, match=problem.replace("(", r"\(").replace(".", r"\.")):
        Decoder(path, type_name, numeric=numeric).decode(payload)  # type: ignore[arg-type]


def test_types_narrow_the_value() -> None:
    assert Decoder(None, "uint16").decode(b"65535").value == 65535
    assert Decoder(None, "uint32").decode(b"12.0").value == 12
    assert Decoder(None, "float").decode(b"3").value == 3.0
    assert Decoder(None, "bool").decode(b"1").value is True
    assert Decoder(None, "bool").decode(b"off").value is False
    assert Decoder(None, "string").decode(b" RUN ").value == "RUN"  # running_values: [RUN] stays text
    assert Decoder("code", "string").decode(b'{"code": 12}').value == "12"


def test_timestamp_and_id_paths() -> None:
    decoder = Decoder("qty", None, numeric=True, id_path="meta.id", time_path="ts")
    assert decoder.decode(b'{"qty": 3, "meta": {"id": "a-1"}, "ts": 1700000000.5}') == Decoded(
        3, 1700000000.5, "a-1")
    assert decoder.decode(b'{"qty": 3, "meta": {"id": 17}, "ts": 1700000000500}').msg_id == "17"
    missing = decoder.decode(b'{"qty": 3, "ts": "2023-11-14T22:13:20Z"}')
    assert missing.value == 3 and missing.msg_id is None and missing.source_time == 1700000000.0
    assert missing.problem is not None and "without de-duplication" in missing.problem
    bad_time = decoder.decode(b'{"qty": 3, "meta": {"id": "x"}, "ts": "yesterday"}')
    assert bad_time.value == 3 and bad_time.source_time is None and "timestamp" in str(bad_time.problem)


def test_time_units_and_iso_text() -> None:
    assert parse_time(1700000000) == 1700000000.0
    assert parse_time(1700000000123) == pytest.approx(1700000000.123)
    assert parse_time(1700000000123456) == pytest.approx(1700000000.123456)
    assert parse_time("2023-11-14T22:13:20+00:00") == 1700000000.0
    local = datetime(2023, 11, 14, 22, 13, 20).timestamp()
    assert parse_time("2023-11-14T22:13:20") == local  # no offset: the PC's local time
    assert datetime.fromtimestamp(parse_time("1700000000"), UTC).year == 2023


@given(st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False)))
def test_numbers_survive_the_text_round_trip(number: int | float) -> None:
    value = Decoder(None, None, numeric=True).decode(repr(number).encode()).value
    assert value == number and not isinstance(value, bool)


@given(st.binary(max_size=200))
def test_any_bytes_give_a_value_or_a_payload_error(payload: bytes) -> None:
    for decoder in (Decoder(None, None, numeric=True), Decoder("a.b", "uint32", id_path="id", time_path="t")):
        try:
            value = decoder.decode(payload).value
        except PayloadError:
            continue
        assert not isinstance(value, float) or math.isfinite(value)


_VALUES = st.one_of(st.integers(-5, 10**6), st.booleans(), st.text(max_size=5), st.none())
_DOCUMENTS = st.dictionaries(st.sampled_from(["count", "run", "t"]), _VALUES).map(
    lambda d: json.dumps(d).encode())


@given(st.one_of(st.binary(max_size=60), _DOCUMENTS))
def test_tags_sharing_one_parse_of_a_message_decode_as_each_alone(payload: bytes) -> None:
    decoders = [Decoder("count", "uint32", numeric=True), Decoder("run", "bool"),
                Decoder("t", None, id_path="run"), Decoder(None, None)]
    shared: dict[str, object] = {}
    for decoder in decoders:
        alone: Decoded | str
        together: Decoded | str
        try:
            alone = decoder.decode(payload)
        except PayloadError as exc:
            alone = str(exc)
        try:
            together = decoder.decode(payload, shared)
        except PayloadError as exc:
            together = str(exc)
        assert together == alone


def test_paths() -> None:
    assert parse_path("data.items[0].qty") == ("data", "items", 0, "qty")
    with pytest.raises(ValueError, match="not a JSON path"):
        parse_path("data..qty")


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), [
    ("a/b/c", "a/b/c", True), ("a/+/c", "a/x/c", True), ("a/+/c", "a/x/y/c", False),
    ("a/#", "a", True), ("a/#", "a/b/c", True), ("#", "a/b", True), ("+/b", "/b", True),
    ("#", "$SYS/broker", False), ("+/broker", "$SYS/broker", False), ("$SYS/#", "$SYS/broker", True),
    ("a/+", "a/b/c", False), ("a/b", "a/b/", False), ("a/+/+", "a/b/", True),
])
def test_topic_matching(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(tuple(topic_filter.split("/")), topic) is expected


def test_router_feeds_every_matching_tag() -> None:
    router = Router([("line/+/count", "wild"), ("line/m1/count", "exact"), ("line/#", "all")])
    assert set(router.lookup("line/m1/count")) == {"wild", "exact", "all"}
    assert router.lookup("line/m2/count") == ("wild", "all")
    assert router.lookup("other") == ()
    assert router.lookup("line/m2/count") == ("wild", "all")  # cached


@pytest.mark.parametrize(("topic_filter", "problem"), [
    ("", "cannot be empty"), ("a/#/b", "'#' must be"), ("a/b#", "'#' must be"), ("a/x+/b", "'+' must be"),
    ("$share/g/a", "shared subscriptions"),
])
def test_invalid_filters(topic_filter: str, problem: str) -> None:
    assert problem in str(filter_problem(topic_filter))


MAP = """
connections:
  broker:
    mqtt: {conn}
machines:
  M1:
    connection: broker
    counter: {tag}
"""


def _problems(conn: str, tag: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(MAP.format(conn=conn, tag=tag), "agent.yaml")
    return [str(p) for p in err.value.problems]


def test_connection_settings() -> None:
    cfg = parse_config(MAP.format(conn="{host: b, protocol: 5, tls: true, keepalive: 1m}",
                                  tag="{topic: a/count}"))
    conn = cfg.connections["broker"].config
    assert isinstance(conn, MqttConnection)
    assert (conn.protocol, conn.effective_port, conn.keepalive) == ("5", 8883, 60.0)
    assert conn.tls is not None and conn.tls.verify_hostname
    tag = next(iter(cfg.connections["broker"].tags.values())).spec
    assert isinstance(tag, MqttTag) and tag.topic == "a/count"


@pytest.mark.parametrize(("conn", "tag", "expected"), [
    ("{host: b, protocol: 4}", "{topic: a}", "agent.yaml:4: connections.broker.mqtt.protocol: Input should"),
    ("{host: b, tls: {key_file: k.pem}}", "{topic: a}", "tls: key_file needs cert_file"),
    ("{host: b, keepalive: 1s}", "{topic: a}", "keepalive: must be between 5s and 65535s"),
    ("{host: b, username: u}", "{topic: a}", "unknown key 'username'"),
    ("{host: b}", "{topic: a/#/b}", "agent.yaml:8: machines.M1.counter.topic: '#' must be a whole level"),
    ("{host: b}", "{topic: a, id: n, mode: delta}", "counter: id is a path in a JSON payload: give json"),
    ("{host: b}", "{topic: a, json: 'x..y'}", "counter.json: 'x..y' is not a JSON path"),
    ("{host: b}", "{topic: a, type: uint12}", "counter.type: Input should be 'bool'"),
    ("{host: b}", "{topc: a}", "unknown key 'topc' (did you mean 'topic'?) for a mqtt tag"),
])
def test_configuration_errors_read_well(conn: str, tag: str, expected: str) -> None:
    assert any(expected in p for p in _problems(conn, tag)), _problems(conn, tag)

