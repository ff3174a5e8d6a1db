"""`prodsmart-edge probe opcua`: browse, read nodes, read configured tags, secure endpoints."""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config.loader import parse_config
from agent.probe import opcua as probe
from agent.sources.opcua.security import thumbprint
from tests.conftest import free_port
from tests.support.fixtures_opcua import NAMESPACE, OpcUaServer, make_pki, opcua_server

__all__ = ["opcua_server"]

Start = Callable[..., OpcUaServer]

CONFIG = """
connections:
  oven-plc:
    opcua: {{url: "{url}", sampling: 100ms}}
machines:
  OVEN-01:
    connection: oven-plc
    counter: {{node: "nsu={ns};s=M1.Counter", type: uint32}}
    running: {{path: "Objects/<{ns}>M1/<{ns}>Running"}}
    stop_reason:
      tag: {{node: "nsu={ns};s=M1.StopReason"}}
    parameters:
      temperature: {{node: "nsu={ns};s=M1.Temperature", deadband: 0.5}}
  OVEN-02:
    connection: oven-plc
    counter: {{node: "nsu={ns};s=M2.Nope"}}
"""


@pytest.fixture(scope="module")
def plc() -> Iterator[OpcUaServer]:
    """One server for the tests that only read (starting one takes a second or two)."""
    server = OpcUaServer(free_port()).start()
    yield server
    server.close()


def parse(*argv: str, machine: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    probe.add_arguments(parser)
    args = parser.parse_args(list(argv))
    args.machine = machine  # added by the CLI, like --config
    return args


def lines(out: io.StringIO) -> list[str]:
    return [" ".join(line.split()) for line in out.getvalue().splitlines()]


async def test_browse_shows_node_ids_names_types_and_values(plc: OpcUaServer) -> None:
    server = plc
    server.set("M2.Counter", 42)  # M2 is this test's; the others read M1
    server.set("M2.StopReason", 2)
    out = io.StringIO()
    assert await probe.run(parse("--url", server.url, "--browse", "--depth", "2"), None, out) == 0
    text = lines(out)
    assert f"{server.ns} {NAMESPACE}" in text
    assert "ns=2;s=M1 2:M1 Object" in text
    assert "ns=2;s=M2.Counter 2:Counter Variable UInt32 42" in text
    assert "ns=2;s=M1.Running 2:Running Variable Boolean False" in text
    assert "ns=2;s=M2.StopReason 2:StopReason Variable StopReasonType 2 (MaterialShortage)" in text
    assert "ns=2;s=M1.Temperature 2:Temperature Variable Double 20" in text
    assert "(the Server object (i=2253) is left out: browse from i=2253 to see it)" in text
    out = io.StringIO()
    assert await probe.run(parse("--url", server.url, "--browse", f"Objects/{server.ns}:M2", "--uris"),
                           None, out) == 0
    assert f"nsu={NAMESPACE};s=M2.Counter 2:Counter Variable UInt32 42" in lines(out)


async def test_read_given_nodes(plc: OpcUaServer) -> None:
    server = plc
    out = io.StringIO()
    args = parse("--url", server.url, "--read", "ns=2;s=M1.Temperature", "Objects/2:M1/2:Counter",
                 "ns=2;s=Nope")
    assert await probe.run(args, None, out) == 1
    text = lines(out)
    assert any(line.startswith("ns=2;s=M1.Temperature ns=2;s=M1.Temperature Double 20 ") for line in text)
    assert any(line.startswith("path Objects/2:M1/2:Counter ns=2;s=M1.Counter UInt32 0 ") for line in text)
    assert "ns=2;s=Nope ns=2;s=Nope - BAD: does not exist on the server (BadNodeIdUnknown)" in text


async def test_configured_tags_with_their_roles(plc: OpcUaServer) -> None:
    server = plc
    config = parse_config(CONFIG.format(url=server.url, ns=NAMESPACE), "agent.yaml")
    out = io.StringIO()
    assert await probe.run(parse(machine="OVEN-01"), config, out) == 0
    text = lines(out)
    assert f"OVEN-01 counter nsu={NAMESPACE};s=M1.Counter ns=2;s=M1.Counter UInt32 0" in " ".join(text)
    assert any(line.startswith(f"OVEN-01 running path Objects/<{NAMESPACE}>M1/<{NAMESPACE}>Running "
                               "ns=2;s=M1.Running Boolean False") for line in text)
    assert not any("OVEN-02" in line for line in text)
    out = io.StringIO()
    assert await probe.run(parse(), config, out) == 1
    assert (f"OVEN-02 counter nsu={NAMESPACE};s=M2.Nope ns=2;s=M2.Nope - BAD: does not exist on the "
            "server (BadNodeIdUnknown)") in lines(out)


async def test_usage_and_connection_errors() -> None:
    out = io.StringIO()
    assert await probe.run(parse(), None, out) == 2
    assert "give --url opc.tcp://host:port" in out.getvalue()
    out = io.StringIO()
    assert await probe.run(parse("--url", "opc.tcp://127.0.0.1:1/x", "--timeout", "1s"), None, out) == 1
    assert out.getvalue().strip() == (
        "Cannot reach the OPC UA server at opc.tcp://127.0.0.1:1/x: Connection refused")
    out = io.StringIO()
    args = parse("--url", "opc.tcp://h:1", "--security", "Basic256Sha256/Sign")
    assert await probe.run(args, None, out) == 2
    assert "needs the agent's certificate and private_key" in out.getvalue()


async def test_a_secure_server_with_a_user_and_saving_its_certificate(
        opcua_server: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(tmp_path)
    server = opcua_server(secure=pki.server_folder)
    monkeypatch.setenv(probe.PASSWORD_ENV, pki.password)
    saved = tmp_path / "plc.der"
    out = io.StringIO()
    args = parse("--url", server.url, "--security", "Basic256Sha256/SignAndEncrypt", "--certificate",
                 str(pki.client_cert), "--private-key", str(pki.client_key), "--username", "operator",
                 "--save-server-cert", str(saved), "--read", "ns=2;s=M1.Counter")
    assert await probe.run(args, None, out) == 0, out.getvalue()
    assert saved.read_bytes() == pki.server_cert.read_bytes()
    assert thumbprint(saved.read_bytes()) in out.getvalue()
    assert any(line.startswith("ns=2;s=M1.Counter ns=2;s=M1.Counter UInt32 0") for line in lines(out))
