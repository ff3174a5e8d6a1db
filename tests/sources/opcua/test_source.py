"""The OPC UA source against a real OPC UA server in another process (tests/support/opcua_server.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from agent.core.model import Quality
from agent.sources.opcua.source import OpcUaSource
from tests.support.fixtures_opcua import (
    NAMESPACE,
    OpcUaServer,
    Recorder,
    binding,
    connection,
    opcua_server,
    running,
    wait_for,
)

__all__ = ["opcua_server"]  # the fixture, imported for pytest

Start = Callable[..., OpcUaServer]


async def test_counter_flag_reason_and_float_arrive_with_source_times(opcua_server: Start) -> None:
    server = opcua_server()
    server.set("M1.Counter", 100)
    counter = binding(node=f"nsu={NAMESPACE};s=M1.Counter", type="uint32")
    running_ = binding(path=f"Objects/<{NAMESPACE}>M1/<{NAMESPACE}>Running")
    reason = binding(node=server.node("M1.StopReason"))
    temp = binding(path=f"Objects/{server.ns}:M1/{server.ns}:Temperature")
    tags = [counter, running_, reason, temp]
    rec = Recorder()
    source = OpcUaSource("oven", connection(server), tags, rec.ctx())
    async with running(source):
        await wait_for(lambda: all(rec.good(t.key) for t in tags), what="a good reading of every tag")
        assert rec.states == [("up", "oven")]
        for value in (101, 102, 103):
            server.set("M1.Counter", value)
        server.set("M1.Running", True)
        server.set("M1.StopReason", 2)
        server.set("M1.Temperature", 181.5)
        await wait_for(lambda: rec.good(counter.key)[-1] == 103 and rec.good(temp.key)[-1] == 181.5
                       and rec.good(running_.key)[-1] is True and rec.good(reason.key)[-1] == 2)
    assert rec.good(counter.key)[0] == 100
    assert rec.good(running_.key)[0] is False
    assert not [r for r in rec.readings if r.quality is not Quality.GOOD]
    assert all(r.source_time is not None for r in rec.readings)


async def test_a_server_restart_with_another_namespace_index_is_survived(opcua_server: Start) -> None:
    server = opcua_server()
    counter = binding(node=f"nsu={NAMESPACE};s=M1.Counter", type="uint32")
    by_path = binding(path=f"Objects/<{NAMESPACE}>M2/<{NAMESPACE}>Counter")
    server.set("M1.Counter", 10)
    rec = Recorder()
    source = OpcUaSource("oven", connection(server), [counter, by_path], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.good(counter.key) == [10], what="the first value")
        server.set("M1.Counter", 11)
        await wait_for(lambda: rec.good(counter.key)[-1] == 11)
        server.stop()
        await wait_for(lambda: rec.downs(), what="the connection reported down")
        assert rec.bad(counter.key) and rec.bad(by_path.key)
        server.set("M1.Counter", 15)  # produced while the agent could not see it
        server.set("M2.Counter", 7)
        old_ns = server.ns
        await asyncio.sleep(1.5)  # the agent knocks on a closed door meanwhile
        await asyncio.to_thread(server.start, 1)
        assert server.ns == old_ns + 1
        await wait_for(lambda: rec.good(counter.key)[-1] == 15 and rec.good(by_path.key)[-1] == 7,
                       what="the values missed while away")
        server.set("M1.Counter", 16)
        await wait_for(lambda: rec.good(counter.key)[-1] == 16, what="changes after the restart")
        sessions = server.sessions()
    assert rec.states[0] == ("up", "oven") and rec.states[-1] == ("up", "oven")
    assert rec.downs()[0].startswith(f"Lost the connection to the OPC UA server at {server.url}")
    assert all(why.startswith(f"Cannot reach the OPC UA server at {server.url}: Connection refused")
               for why in rec.downs()[1:])
    assert sessions == 1


async def test_nodes_that_do_not_exist_are_reported_at_start_up_and_the_others_work(
        opcua_server: Start, caplog: pytest.LogCaptureFixture) -> None:
    server = opcua_server()
    good = binding(node=server.node("M1.Counter"))
    missing = binding(node=server.node("M1.Nope"))
    no_namespace = binding(node="nsu=urn:nobody;s=M1.Counter")
    wrong_path = binding(path=f"Objects/{server.ns}:M1/{server.ns}:Nope")
    rec = Recorder()
    source = OpcUaSource("oven", connection(server), [good, missing, no_namespace, wrong_path], rec.ctx())
    with caplog.at_level(logging.INFO, logger="agent.sources.opcua"):
        async with running(source):
            await wait_for(lambda: rec.good(good.key) == [0], what="the good node")
            server.set("M1.Counter", 1)
            await wait_for(lambda: rec.good(good.key)[-1] == 1)
            await asyncio.sleep(1.5)  # the bad nodes are tried again meanwhile (retry_nodes: 1s)
    assert rec.states == [("up", "oven")]
    errors = {k: [r.error for r in rec.bad(k)] for k in (missing.key, no_namespace.key, wrong_path.key)}
    assert errors == {
        missing.key: ["does not exist on the server (BadNodeIdUnknown)"],
        no_namespace.key: ["cannot be found: the server has no namespace urn:nobody"],
        wrong_path.key: ["is not found along its browse path (BadNoMatch)"],
    }
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warnings == sorted([
        f"oven: node {server.node('M1.Nope')} does not exist on the server (BadNodeIdUnknown): it is set "
        "aside and tried again every 1s; the other nodes keep working",
        "oven: node nsu=urn:nobody;s=M1.Counter cannot be found: the server has no namespace urn:nobody: it "
        "is set aside and tried again every 1s; the other nodes keep working",
        f"oven: node path Objects/{server.ns}:M1/{server.ns}:Nope is not found along its browse path "
        "(BadNoMatch): it is set aside and tried again every 1s; the other nodes keep working",
    ])


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_a_node_that_becomes_invalid_is_set_aside_and_comes_back(opcua_server: Start,
                                                                       mode: str) -> None:
    server = opcua_server()
    counter = binding(node=server.node("M1.Counter"))
    temp = binding(node=server.node("M1.Temperature"))
    rec = Recorder()
    source = OpcUaSource("oven", connection(server, mode=mode), [counter, temp], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.good(temp.key) and rec.good(counter.key), what="both nodes")
        await asyncio.to_thread(server.delete, "M1.Temperature")
        await wait_for(lambda: rec.bad(temp.key), what="the deleted node reported bad")
        assert rec.bad(temp.key)[-1].error == "does not exist on the server (BadNodeIdUnknown)"
        assert temp.key in source.quarantine
        server.set("M1.Counter", 2)
        await wait_for(lambda: rec.good(counter.key)[-1] == 2, what="the other node still working")
        server.restore("M1.Temperature")
        server.set("M1.Temperature", 99.5)
        await wait_for(lambda: rec.good(temp.key)[-1] == 99.5, within=5, what="the node back")
        assert not source.quarantine
    assert rec.states == [("up", "oven")]


async def test_bad_and_uncertain_values_are_bad_readings_with_their_status(opcua_server: Start) -> None:
    server = opcua_server()
    temp = binding(node=server.node("M1.Temperature"))
    rec = Recorder()
    source = OpcUaSource("oven", connection(server), [temp], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.good(temp.key), what="a good value")
        server.status("M1.Temperature", "BadSensorFailure")
        await wait_for(lambda: rec.bad(temp.key), what="the bad value")
        server.status("M1.Temperature", "UncertainLastUsableValue")
        await wait_for(lambda: len(rec.bad(temp.key)) == 2, what="the uncertain value")
        server.set("M1.Temperature", 21.5)
        await wait_for(lambda: rec.good(temp.key)[-1] == 21.5, what="a good value again")
    bad = rec.bad(temp.key)
    assert [r.error for r in bad] == ["BadSensorFailure", "UncertainLastUsableValue"]
    assert all(r.value is None and r.source_time is not None for r in bad)
    assert temp.key not in source.quarantine
    assert rec.states == [("up", "oven")]


async def test_a_silent_subscription_is_taken_as_dead_and_made_again(opcua_server: Start) -> None:
    server = opcua_server()
    counter = binding(node=server.node("M1.Counter"))
    rec = Recorder()
    source = OpcUaSource("oven", connection(server, stale_after=2.0), [counter], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.good(counter.key) == [0], what="the first value")
        server.silence()
        server.set("M1.Counter", 3)  # nobody is told: the subscription is gone
        await wait_for(lambda: rec.downs(), within=5, what="the silence noticed")
        await wait_for(lambda: rec.good(counter.key)[-1] == 3, within=5, what="the value read on reconnect")
        server.set("M1.Counter", 4)
        await wait_for(lambda: rec.good(counter.key)[-1] == 4, what="changes through the new subscription")
    assert rec.downs() == [f"The OPC UA server at {server.url} sent nothing for 2s, not even its clock: the "
                           "subscription is taken as dead"]
    assert server.sessions() == 2


async def test_a_hung_server_is_noticed_by_the_keepalive_and_reconnected(opcua_server: Start) -> None:
    server = opcua_server()
    counter = binding(node=server.node("M1.Counter"))
    rec = Recorder()
    source = OpcUaSource("oven", connection(server, keepalive=0.5, timeout=1.0, stale_after=10.0), [counter],
                         rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.good(counter.key) == [0], what="the first value")
        server.freeze()
        try:
            await wait_for(lambda: rec.downs(), within=5, what="the hang noticed")
            await asyncio.sleep(1.5)  # attempts on the frozen server time out; none may hang
        finally:
            server.freeze(False)
        server.set("M1.Counter", 8)
        await wait_for(lambda: rec.good(counter.key)[-1] == 8, within=8, what="the value after the hang")
    assert rec.downs()[0] == f"The OPC UA server at {server.url} did not answer within 0.5s"
    assert rec.states[-1] == ("up", "oven")


async def test_a_session_the_server_closed_is_made_again(opcua_server: Start) -> None:
    server = opcua_server()
    counter = binding(node=server.node("M1.Counter"))
    rec = Recorder()
    source = OpcUaSource("oven", connection(server), [counter], rec.ctx())
    async with running(source):
        await wait_for(lambda: rec.good(counter.key) == [0], what="the first value")
        server.expire()
        server.set("M1.Counter", 6)
        await wait_for(lambda: rec.downs(), within=5, what="the closed session noticed")
        await wait_for(lambda: rec.good(counter.key)[-1] == 6, within=5, what="the value in a new session")
    assert rec.downs() == [f"The OPC UA server at {server.url} closed the session (BadSessionNotActivated)"]
    assert server.sessions() == 2
