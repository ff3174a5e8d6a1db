"""OPC UA security against a real server process: Basic256Sha256 SignAndEncrypt, users, trust."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.sources.opcua.security import thumbprint
from agent.sources.opcua.source import OpcUaSource
from tests.support.fixtures_opcua import (
    OpcUaServer,
    Pki,
    Recorder,
    binding,
    connection,
    make_pki,
    opcua_server,
    running,
    wait_for,
)

__all__ = ["opcua_server"]  # the fixture, imported for pytest

Start = Callable[..., OpcUaServer]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def _secured(server: OpcUaServer, pki: Pki, **settings: object) -> dict[str, object]:
    return {"security": "Basic256Sha256/SignAndEncrypt", "certificate": str(pki.client_cert),
            "private_key": str(pki.client_key), "auth": "username", **settings}


@pytest.mark.parametrize("security", ["Basic256Sha256/SignAndEncrypt", "Basic256Sha256/Sign"])
async def test_a_secure_channel_with_a_user_and_a_trusted_folder(opcua_server: Start, pki: Pki,
                                                                 tmp_path: Path, security: str) -> None:
    server = opcua_server(secure=pki.server_folder)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(pki.server_cert, trusted / "plc.der")
    counter = binding(node=server.node("M1.Counter"), type="uint32")
    rec = Recorder(secrets={"username": "operator", "password": pki.password})
    cfg = connection(server, **_secured(server, pki, trust=str(trusted), security=security))
    source = OpcUaSource("oven", cfg, [counter], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.good(counter.key) == [0], what="a value over the secure channel")
        server.set("M1.Counter", 5)
        await wait_for(lambda: rec.good(counter.key)[-1] == 5)
    assert rec.states == [("up", "oven")]


async def test_a_wrong_password_is_a_clear_error_and_does_not_flood_the_server(
        opcua_server: Start, pki: Pki) -> None:
    server = opcua_server(secure=pki.server_folder)
    rec = Recorder(secrets={"username": "operator", "password": "wrong"})
    cfg = connection(server, **_secured(server, pki))
    source = OpcUaSource("oven", cfg, [binding(node="i=2258")], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.downs(), what="the connection reported down")
        await asyncio.sleep(3.0)
    assert rec.downs()[0] == (f"The OPC UA server at {server.url} refused the user name or password "
                              "(BadUserAccessDenied)")
    assert len(set(rec.downs())) == 1
    assert server.sessions() <= 4  # backoff with jitter: 0.5-1 s, then 1-2 s, then 2 s...


async def test_an_untrusted_server_certificate_is_refused(opcua_server: Start, pki: Pki,
                                                          tmp_path: Path) -> None:
    server = opcua_server(secure=pki.server_folder)
    empty = tmp_path / "trusted"
    empty.mkdir()
    rec = Recorder(secrets={"username": "operator", "password": pki.password})
    source = OpcUaSource("oven", connection(server, **_secured(server, pki, trust=str(empty))),
                         [binding(node="i=2258")], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.downs(), what="the connection reported down")
    why = rec.downs()[0]
    assert why.startswith(f"The OPC UA server at {server.url} presented a certificate that is not trusted")
    assert thumbprint(pki.server_cert.read_bytes()) in why
    assert why.endswith(f"copy it into {empty} to trust it")
    assert server.sessions() == 0


async def test_trust_on_first_use_is_logged_and_pinned(opcua_server: Start, pki: Pki,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    server = opcua_server(secure=pki.server_folder)
    rec = Recorder(secrets={"username": "operator", "password": pki.password})
    source = OpcUaSource("oven", connection(server, **_secured(server, pki)), [binding(node="i=2258")],
                         rec.ctx())
    with caplog.at_level(logging.WARNING, logger="agent.sources.opcua"):
        async with running(source):
            await wait_for(lambda: rec.good(binding(node="i=2258").key), what="a value")
    assert source.trust.pinned == pki.server_cert.read_bytes()
    [record] = [r for r in caplog.records if "first use" in r.getMessage()]
    assert thumbprint(pki.server_cert.read_bytes()) in record.getMessage()


async def test_the_server_refuses_an_agent_certificate_it_does_not_trust(opcua_server: Start,
                                                                         pki: Pki) -> None:
    (pki.server_folder / "trusted" / "agent.der").unlink()
    shutil.copy(pki.server_cert, pki.server_folder / "trusted" / "other.der")  # another certificate only
    server = opcua_server(secure=pki.server_folder)
    rec = Recorder(secrets={"username": "operator", "password": pki.password})
    cfg = connection(server, **_secured(server, pki))
    source = OpcUaSource("oven", cfg, [binding(node="i=2258")], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.downs(), what="the connection reported down")
    assert rec.downs()[0].startswith(f"The OPC UA server at {server.url} does not accept the agent's "
                                     f"certificate {pki.client_cert}")
