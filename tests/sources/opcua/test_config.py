"""OPC UA configuration, NodeId and browse path parsing, value conversion, error texts (no server)."""

from __future__ import annotations

import datetime as dt
import enum
from pathlib import Path

import pytest
from asyncua import ua

from agent.config.loader import load_config, parse_config
from agent.config.problems import ConfigError
from agent.core.model import Quality
from agent.core.schema import counter_modulus
from agent.sources.opcua.config import OpcUaConnection, OpcUaTag
from agent.sources.opcua.errors import link_error
from agent.sources.opcua.nodes import NodeRef, PathRef, parse_browse_path, parse_node_id, resolve_namespace
from agent.sources.opcua.values import UnusableValue, scalar, to_reading

EXAMPLE = Path("/work/shared/examples/agent.yaml")
URL = "opc.tcp://10.0.0.5:4840"


def test_the_example_loads() -> None:
    config = load_config(EXAMPLE)
    conn = config.connections["oven-plc"]
    assert isinstance(conn.config, OpcUaConnection)
    assert conn.config.security == "Basic256Sha256/SignAndEncrypt"
    assert (conn.config.policy, conn.config.security_mode) == ("Basic256Sha256", "SignAndEncrypt")
    assert conn.config.sampling == 0.25 and conn.config.publishing_interval == 0.25
    assert conn.config.mode == "subscribe" and conn.config.trust == "first_use"
    oven = config.machines["OVEN-02"]
    assert oven.counter is not None and oven.counter.modulus == 2**32
    counter = conn.tags[oven.counter.tag].spec
    assert isinstance(counter, OpcUaTag)
    assert parse_node_id(counter.node or "") == NodeRef("urn:oven:plc", "s", "Oven02.GoodParts")


def _config(connection: str, tags: str) -> str:
    return f"connections:\n  oven:\n    opcua: {connection}\nmachines:\n  OVEN:\n    connection: oven\n{tags}"


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "agent.yaml")
    return [str(p) for p in info.value.problems]


def test_browse_paths_indexes_and_poll_mode_load() -> None:
    conn = f"{{url: {URL}/plc, mode: poll, sampling: 1s, trust: /etc/pki/trusted, auth: username}}"
    text = _config(conn, "    counter: {path: 'Objects/<urn:oven:plc>Oven02/<urn:oven:plc>GoodParts', "
                         "type: uint16}\n"
                         "    parameters:\n      zone3: {node: 'ns=2;s=Zones', index: 3, deadband: 0.5}\n")
    config = parse_config(text)
    conn = config.connections["oven"].config
    assert isinstance(conn, OpcUaConnection) and conn.mode == "poll" and conn.auth == "username"
    assert config.machines["OVEN"].counter is not None and config.machines["OVEN"].counter.modulus == 2**16
    tags = {b.spec.model_dump(exclude_none=True)["type"] if "type" in b.spec.model_dump(exclude_none=True)
            else "param": b.spec for b in config.connections["oven"].tags.values()}
    assert isinstance(tags["param"], OpcUaTag) and tags["param"].index == 3
    assert tags["param"].address == "ns=2;s=Zones [3]"


def test_connection_errors_read_well() -> None:
    text = _config("{url: 'http://x', security: Basic256/Sign, sampling: 0, mode: push}",
                   "    counter: {node: 'i=2258'}\n")
    assert _problems(text) == [
        "agent.yaml:3: connections.oven.opcua.mode: Input should be 'subscribe' or 'poll' (got 'push')",
        "agent.yaml:3: connections.oven.opcua.sampling: must be more than 0 (got 0)",
        "agent.yaml:3: connections.oven.opcua.security: must be None or <policy>/<mode>: policy one of "
        "Basic256Sha256, Aes128Sha256RsaOaep, Aes256Sha256RsaPss, mode Sign or SignAndEncrypt, e.g. "
        "Basic256Sha256/SignAndEncrypt (got 'Basic256/Sign')",
        "agent.yaml:3: connections.oven.opcua.url: must look like opc.tcp://192.168.10.30:4840 (optionally "
        "with a path) (got 'http://x')",
    ]
    tag = "    counter: {node: 'i=1'}\n"
    assert _problems(_config(f"{{url: {URL}, security: Basic256Sha256/Sign}}", tag)) == [
        "agent.yaml:3: connections.oven.opcua: security Basic256Sha256/Sign needs the agent's certificate "
        "and private_key files"]
    assert _problems(_config(f"{{url: {URL}, publishing: 2s, stale_after: 3s}}", tag)) == [
        "agent.yaml:3: connections.oven.opcua: stale_after must be at least twice the publishing interval "
        "and at least 2s: the server's clock changes only once a second"]


def test_tag_errors_read_well() -> None:
    tags = ("    counter: {node: 'ns=2;x=1', type: uint32}\n"
            "    running: {path: 'Objects//x'}\n"
            "    parameters:\n"
            "      a: {node: 'ns=2;s=A', path: 'Objects/2:A'}\n"
            "      b: {deadband: 1}\n"
            "      c: {nodeid: 'ns=2;s=A'}\n"
            "      d: {node: 'ns=2;i=abc'}\n"
            "      e: {node: 'ns=2;s=E', type: uint23}\n")
    assert _problems(_config(f"{{url: {URL}}}", tags)) == [
        "agent.yaml:7: machines.OVEN.counter.node: is not a NodeId: write it like ns=2;s=Oven02.State, "
        "ns=3;i=1001 or nsu=urn:oven:plc;s=Oven02.State (got 'ns=2;x=1')",
        "agent.yaml:8: machines.OVEN.running.path: is not a browse path: write it like "
        "Objects/2:Oven02/2:GoodParts (got 'Objects//x')",
        "agent.yaml:10: machines.OVEN.parameters.a: give node or path, not both",
        "agent.yaml:11: machines.OVEN.parameters.b: needs node (a NodeId such as ns=2;s=Oven02.GoodParts) or "
        "path (a browse path such as Objects/2:Oven02/2:GoodParts)",
        "agent.yaml:12: machines.OVEN.parameters.c.nodeid: unknown key 'nodeid' (did you mean 'node'?) for a "
        "opcua tag",
        "agent.yaml:13: machines.OVEN.parameters.d.node: has a numeric identifier (i=) that is not a number "
        "from 0 to 4294967295 (got 'ns=2;i=abc')",
        "agent.yaml:14: machines.OVEN.parameters.e.type: must be one of bool, int8, uint8, int16, uint16, "
        "int32, uint32, int64, uint64, float, double, float32, float64, string, datetime (got 'uint23')",
    ]


@pytest.mark.parametrize(("text", "ref", "again"), [
    ("ns=2;s=Oven02.State", NodeRef(2, "s", "Oven02.State"), "ns=2;s=Oven02.State"),
    ("nsu=urn:oven:plc;s=A;B", NodeRef("urn:oven:plc", "s", "A;B"), "nsu=urn:oven:plc;s=A;B"),
    ("i=2258", NodeRef(0, "i", 2258), "i=2258"),
    ("ns=3;i=1001", NodeRef(3, "i", 1001), "ns=3;i=1001"),
    ("ns=1;g=72962B91-FA75-4AE6-8D28-B404DC7DAF63", NodeRef(1, "g", "72962b91-fa75-4ae6-8d28-b404dc7daf63"),
     "ns=1;g=72962b91-fa75-4ae6-8d28-b404dc7daf63"),
    ("ns=4;b=aGVsbG8=", NodeRef(4, "b", "aGVsbG8="), "ns=4;b=aGVsbG8="),
])
def test_node_ids(text: str, ref: NodeRef, again: str) -> None:
    assert parse_node_id(text) == ref
    assert ref.text() == again
    # Once its namespace is resolved, asyncua reads it back the same.
    index = resolve_namespace(ref.namespace, ["http://opcfoundation.org/UA/", "urn:oven:plc"])
    assert ua.NodeId.from_string(ref.text(index)).NamespaceIndex == index


@pytest.mark.parametrize(("text", "message"), [
    ("x=1", "is not a NodeId"), ("s=", "is not a NodeId"), ("ns=70000;i=1", "above 65535"),
    ("i=4294967296", "not a number"), ("g=nope", "not a GUID"), ("b=@@", "not base64"),
])
def test_bad_node_ids(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_node_id(text)


@pytest.mark.parametrize(("text", "steps"), [
    ("Objects/2:Oven02/2:GoodParts", ((0, "Objects"), (2, "Oven02"), (2, "GoodParts"))),
    ("/Root/Objects/Server", ((0, "Objects"), (0, "Server"))),
    ("Objects/<http://acme.com/UA/>Oven/<http://acme.com/UA/>Good Parts",
     ((0, "Objects"), ("http://acme.com/UA/", "Oven"), ("http://acme.com/UA/", "Good Parts"))),
])
def test_browse_paths(text: str, steps: tuple[tuple[int | str, str], ...]) -> None:
    assert parse_browse_path(text) == PathRef(steps)
    assert parse_browse_path(PathRef(steps).text()) == PathRef(steps)


@pytest.mark.parametrize("text", ["", "Objects//x", "Root", "Objects/<urn:x>", "Objects/<>X"])
def test_bad_browse_paths(text: str) -> None:
    with pytest.raises(ValueError, match=r"browse path|without a namespace URI"):
        parse_browse_path(text)


def test_an_unknown_namespace_uri() -> None:
    with pytest.raises(LookupError, match="the server has no namespace urn:x"):
        resolve_namespace("urn:x", ["http://opcfoundation.org/UA/"])


class _Reason(enum.IntEnum):
    MAINTENANCE = 1


def test_values_become_plain_scalars() -> None:
    stamp = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    assert scalar(True) is True
    assert scalar(7) == 7 and scalar(2.5) == 2.5 and scalar("run") == "run"
    assert scalar(_Reason.MAINTENANCE) == 1 and type(scalar(_Reason.MAINTENANCE)) is int
    assert scalar(stamp) == stamp.timestamp()
    assert scalar(ua.LocalizedText("Läuft")) == "Läuft"
    assert scalar([1, 2, 3], 2) == 3
    for raw, index, message in [([1, 2], None, "array of 2 values: add index"), ([1], 4, "no index 4"),
                                (5, 0, "not an array"), (None, None, "no value"),
                                (ua.Argument(), None, "structured value")]:
        with pytest.raises(UnusableValue, match=message):
            scalar(raw, index)


def test_status_and_timestamps_of_a_data_value() -> None:
    stamp = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    good = ua.DataValue(ua.Variant(12, ua.VariantType.UInt32), SourceTimestamp=stamp)
    reading = to_reading("oven", "k", good, None, 5.0)
    assert (reading.value, reading.quality, reading.source_time, reading.received_time) == (
        12, Quality.GOOD, stamp.timestamp(), 5.0)
    uncertain = ua.DataValue(ua.Variant(12, ua.VariantType.UInt32),
                             ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue), SourceTimestamp=stamp)
    reading = to_reading("oven", "k", uncertain, None, 5.0)
    assert (reading.value, reading.quality, reading.error) == (None, Quality.BAD, "UncertainLastUsableValue")
    assert reading.source_time == stamp.timestamp()
    array = to_reading("oven", "k", ua.DataValue(ua.Variant([1.5, 2.5])), None, 5.0)
    assert array.quality is Quality.BAD
    assert array.error == "is an array of 2 values: add index: to the tag to pick one"


def test_foreign_errors_become_plain_sentences() -> None:
    from asyncua.ua.uaerrors import BadSecurityChecksFailed, BadTooManySessions, BadUserAccessDenied

    assert str(link_error(ConnectionRefusedError(111, "Connect call failed"), URL)) == (
        f"Cannot reach the OPC UA server at {URL}: Connection refused")
    assert str(link_error(TimeoutError(), URL, timeout=5)) == (
        f"The OPC UA server at {URL} did not answer within 5s")
    assert str(link_error(BadUserAccessDenied(), URL, anonymous=False)) == (
        f"The OPC UA server at {URL} refused the user name or password (BadUserAccessDenied)")
    assert "set auth: username" in str(link_error(BadUserAccessDenied(), URL, anonymous=True))
    assert str(link_error(BadSecurityChecksFailed(), URL, certificate="/pki/agent.der")) == (
        f"The OPC UA server at {URL} does not accept the agent's certificate /pki/agent.der "
        "(BadSecurityChecksFailed): add it to the server's trusted certificates")
    assert "no room for another session" in str(link_error(BadTooManySessions(), URL))


def test_counter_width_comes_from_the_type() -> None:
    assert counter_modulus(OpcUaTag(node="i=1", type="uint16").type) == 2**16
