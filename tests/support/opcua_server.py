"""An OPC UA server (asyncua) for tests and the benchmark, run in its own process.

    python -m tests.support.opcua_server --port 4840 [--machines 2] [--shift 1] [--secure DIR] [--values JSON]
    python -m tests.support.opcua_server --port 4840 --bench 2000 --rate 10

Namespace `urn:prodsmart-edge:test` holds, for machines M1..Mn, the object `Objects/M<i>` with the
variables `Counter` (UInt32), `Running` (Boolean), `StopReason` (the enum `StopReasonType`) and
`Temperature` (Double), NodeIds `ns=<ns>;s=M<i>.Counter` ...; all are writable by clients.
`--shift N` registers N dummy namespaces first, so the test namespace gets another index (a PLC
whose program changed). `--secure DIR` serves only Basic256Sha256 (SignAndEncrypt and Sign) with
DIR/server.der and DIR/server.pem, trusts only the client certificates in DIR/trusted/, and accepts the user
`operator` with the password in DIR/password. `--bench N --rate HZ` adds N Double variables
`ns=<ns>;s=B.<i>` that the server itself writes HZ times a second with the wall-clock time of the
write as their value.

It prints `ready <namespace index>` once it listens, then takes JSON commands on stdin, one a
line, and answers each with `ok` (or `error ...`):

    {"op": "set", "node": "M1.Counter", "value": 5}              write a value (Good, timestamped now)
    {"op": "status", "node": "M1.Temperature", "status": "BadSensorFailure"}    bad or uncertain value
    {"op": "delete", "node": "M1.Temperature"}                   the node disappears (new PLC program)
    {"op": "restore", "node": "M1.Temperature"}                  ... and comes back with its last value
    {"op": "silence"}                                             drop every subscription, say nothing
    {"op": "expire"}                                              close every session (as on a timeout)
    {"op": "sessions"}                                            prints `ok <sessions created so far>`
    {"op": "ticks"}                                               prints `ok <bench rounds written so far>`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Node, Server, ua
from asyncua.common.structures104 import new_enum
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

NAMESPACE = "urn:prodsmart-edge:test"
VARIABLES: dict[str, tuple[ua.VariantType, Any]] = {
    "Counter": (ua.VariantType.UInt32, 0),
    "Running": (ua.VariantType.Boolean, False),
    "StopReason": (ua.VariantType.Int32, 0),
    "Temperature": (ua.VariantType.Double, 20.0),
}
REASONS = ["None", "Maintenance", "MaterialShortage", "ToolChange"]


def _now() -> datetime:
    return datetime.now(UTC)


class Users:
    """One user, `operator`, with the password of the secured test endpoint."""

    def __init__(self, password: str) -> None:
        self.password = password

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username == "operator" and password == self.password:
            return User(role=UserRole.User, name=username)
        return None


class TestPlc:
    def __init__(self, server: Server, ns: int) -> None:
        self.server = server
        self.ns = ns
        self.nodes: dict[str, Node] = {}
        self.parents: dict[str, Node] = {}
        self.last: dict[str, ua.Variant] = {}  # last good value of each variable
        self.deleted: set[str] = set()
        self.sessions = 0
        self.ticks = 0  # bench rounds written

    async def add_machine(self, name: str, enum_type: ua.NodeId, values: dict[str, Any]) -> None:
        objects = self.server.nodes.objects
        obj = await objects.add_object(ua.NodeId(name, self.ns), ua.QualifiedName(name, self.ns))
        for var, (vtype, default) in VARIABLES.items():
            self.parents[f"{name}.{var}"] = obj
            await self._add_variable(f"{name}.{var}", values.get(f"{name}.{var}", default), vtype,
                                     enum_type if var == "StopReason" else None)

    async def _add_variable(self, key: str, value: Any, vtype: ua.VariantType,
                            datatype: ua.NodeId | None = None) -> None:
        parent = self.parents[key]
        name = key.split(".", 1)[1]
        node = await parent.add_variable(ua.NodeId(key, self.ns), ua.QualifiedName(name, self.ns),
                                         ua.Variant(value, vtype), datatype=datatype)
        await node.set_writable()
        self.nodes[key] = node
        self.last[key] = ua.Variant(value, vtype)

    async def _write(self, key: str, status: int) -> None:
        dv = ua.DataValue(self.last[key], ua.StatusCode(status), SourceTimestamp=_now())
        await self.nodes[key].write_value(dv)

    async def command(self, cmd: dict[str, Any]) -> str:
        op = cmd["op"]
        if op == "set":
            key = cmd["node"]
            self.last[key] = ua.Variant(cmd["value"], self.last[key].VariantType)
            await self._write(key, ua.StatusCodes.Good)
        elif op == "status":
            await self._write(cmd["node"], getattr(ua.StatusCodes, cmd["status"]))
        elif op == "delete":
            # A conformant server tells subscribers that the node is gone; asyncua's server fails
            # to (its delete callback is never awaited), so say it with the value's status first.
            await self._write(cmd["node"], ua.StatusCodes.BadNodeIdUnknown)
            await asyncio.sleep(0.3)
            await self.server.delete_nodes([self.nodes.pop(cmd["node"])])
            self.deleted.add(cmd["node"])
        elif op == "restore":
            self.deleted.remove(cmd["node"])
            old = self.last[cmd["node"]]
            await self._add_variable(cmd["node"], old.Value, old.VariantType)
        elif op == "silence":
            service = self.server.iserver.subscription_service
            await service.delete_subscriptions(list(service.subscriptions))
        elif op == "expire":
            # What the server does when a session times out: close it, with its subscriptions.
            iserver = self.server.iserver
            for session in list(iserver._external_sessions.values()):
                await session.close_session(True)
        elif op == "sessions":
            return f"ok {self.sessions}"
        elif op == "ticks":
            return f"ok {self.ticks}"
        else:
            return f"error unknown op {op!r}"
        return "ok"


async def _secure(server: Server, folder: Path) -> None:
    await server.load_certificate(str(folder / "server.der"))
    await server.load_private_key(str(folder / "server.pem"))
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                                ua.SecurityPolicyType.Basic256Sha256_Sign])
    server.set_identity_tokens([ua.UserNameIdentityToken])
    store = TrustStore([folder / "trusted"], [])
    await store.load()
    options = CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
    server.set_certificate_validator(CertificateValidator(options, store))


async def _bench(plc: TestPlc, count: int, rate: float) -> None:
    """Write every bench variable `rate` times a second; the value is the time of the write."""
    nodes = [plc.nodes[f"B.{i}"].nodeid for i in range(count)]
    period = 1.0 / rate
    next_at = time.monotonic()
    while True:
        stamp = _now()
        for nodeid in nodes:
            value = ua.Variant(time.time(), ua.VariantType.Double)
            dv = ua.DataValue(value, SourceTimestamp=stamp, ServerTimestamp=stamp)
            await plc.server.write_attribute_value(nodeid, dv)
        plc.ticks += 1
        next_at += period
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def _serve(args: argparse.Namespace) -> None:
    users = Users((Path(args.secure) / "password").read_text().strip()) if args.secure else None
    server = Server(user_manager=users) if users is not None else Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{args.port}/test")
    server.set_server_name("prodsmart-edge test PLC")
    await server.set_application_uri("urn:prodsmart-edge:test-plc")
    if args.secure:
        await _secure(server, Path(args.secure))
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    for i in range(args.shift):
        await server.register_namespace(f"urn:prodsmart-edge:dummy:{i}")
    ns = await server.register_namespace(NAMESPACE)
    plc = TestPlc(server, ns)
    enum_node = await new_enum(server, ns, "StopReasonType", list(REASONS))
    values = json.loads(args.values) if args.values else {}
    for m in range(1, args.machines + 1):
        await plc.add_machine(f"M{m}", enum_node.nodeid, values)
    if args.bench:
        bench = await server.nodes.objects.add_folder(ua.NodeId("B", ns), ua.QualifiedName("Bench", ns))
        for i in range(args.bench):
            plc.parents[f"B.{i}"] = bench
            await plc._add_variable(f"B.{i}", 0.0, ua.VariantType.Double)
    _count_sessions(server, plc)
    async with server:
        tasks = [asyncio.create_task(_bench(plc, args.bench, args.rate))] if args.bench else []
        print(f"ready {ns}", flush=True)
        await _commands(plc)
        for task in tasks:
            task.cancel()


def _count_sessions(server: Server, plc: TestPlc) -> None:
    """Count CreateSession requests, so a test can see that nobody floods a dead server."""
    iserver = server.iserver
    create = iserver.create_session

    def counting(*args: Any, **kwargs: Any) -> Any:
        plc.sessions += 1
        return create(*args, **kwargs)

    iserver.create_session = counting  # type: ignore[method-assign]


async def _commands(plc: TestPlc) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return  # stdin closed: the test is gone
        try:
            answer = await plc.command(json.loads(line))
        except Exception as exc:
            answer = f"error {exc!r}"
        print(answer, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.opcua_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--machines", type=int, default=2)
    parser.add_argument("--shift", type=int, default=0, help="dummy namespaces registered first")
    parser.add_argument("--secure", help="folder with server.der, server.pem, trusted/, password")
    parser.add_argument("--values", help="initial values as JSON, e.g. {\"M1.Counter\": 100}")
    parser.add_argument("--bench", type=int, default=0)
    parser.add_argument("--rate", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
