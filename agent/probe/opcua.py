"""`prodsmart-edge probe opcua`: browse a server's address space and read nodes while commissioning.

Three uses:
- `--browse [START]`: the tree below START (default Objects), `--depth` levels deep, with each
  node's NodeId, browse name, class, data type and value, to copy NodeIds into the tag map;
- `--read NODE ...`: given nodes (NodeIds or browse paths), read once;
- a configuration (`--config`, optionally `--machine` or `--connection`) and nothing else: every
  configured tag resolved and read once, with the role it plays.
The server is given by `--url` (and the security options) or by a configured connection.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from asyncua import ua
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIdNames
from pydantic import ValidationError

from agent.config.secrets import connection_secret
from agent.config.specs import AgentConfig, ConnectionSpec, tag_roles
from agent.core.schema import parse_duration
from agent.sources.base import TagBinding
from agent.sources.opcua.config import OpcUaConnection, OpcUaTag
from agent.sources.opcua.errors import LinkError
from agent.sources.opcua.link import Link, Point
from agent.sources.opcua.security import Credentials, Trust, describe_certificate
from agent.sources.opcua.source import quiet_library_logs
from agent.sources.opcua.values import NODE_INVALID, UnusableValue, describe, scalar, status_name

PASSWORD_ENV = "PRODSMART_EDGE_PROBE_PASSWORD"
SERVER_OBJECT = ua.NodeId.from_string("i=2253")
OBJECTS = ua.NodeId.from_string("i=85")
_DEVICE_ARGS = {"url": "url", "security": "security", "certificate": "certificate",
                "private_key": "private_key", "trust": "trust", "timeout": "timeout"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("server (instead of, or overriding, a configured connection)")
    server.add_argument("--connection", help="with --config: the OPC UA connection to use")
    server.add_argument("--url", help="e.g. opc.tcp://192.168.10.30:4840")
    server.add_argument("--security", help="None (default) or e.g. Basic256Sha256/SignAndEncrypt")
    server.add_argument("--certificate", help="the agent's certificate (DER or PEM)")
    server.add_argument("--private-key", dest="private_key", help="the agent's private key")
    server.add_argument("--trust", help="first_use (default) or a folder of trusted server certificates")
    server.add_argument("--username", help=f"log in as this user (the password from {PASSWORD_ENV}, "
                                           "or asked for)")
    server.add_argument("--timeout", help="request timeout, e.g. 5s")
    server.add_argument("--save-server-cert", dest="save_server_cert", metavar="FILE",
                        help="write the server's certificate (DER) to FILE, e.g. into the trusted folder")
    what = parser.add_argument_group("what to show")
    what.add_argument("--browse", nargs="?", const="i=85", metavar="START",
                      help="browse from START, a NodeId or browse path (default: Objects)")
    what.add_argument("--depth", type=int, default=3, help="levels to browse (default 3)")
    what.add_argument("--max", type=int, default=500, help="nodes to show at most (default 500)")
    what.add_argument("--read", nargs="+", metavar="NODE", help="read these nodes (NodeIds or browse paths)")
    what.add_argument("--uris", action="store_true", help="write NodeIds with namespace URIs (nsu=...)")


class _Usage(Exception):
    """The command line does not say what to read or from where."""


async def run(args: argparse.Namespace, config: AgentConfig | None, out: TextIO) -> int:
    quiet_library_logs()
    try:
        spec = _connection(args, config)
        cfg = _settings(args, spec)
        creds = _credentials(args, spec, cfg)
    except _Usage as exc:
        print(f"probe opcua: {exc}", file=out)
        return 2
    link = Link(cfg, creds, Trust(cfg.trust, spec.name if spec else "probe", cfg.url))
    try:
        await link.open()
        _header(link, cfg, out)
        if args.save_server_cert and link.server_certificate is not None:
            await asyncio.to_thread(Path(args.save_server_cert).write_bytes, link.server_certificate)
            print(f"Saved the server's certificate to {args.save_server_cert}", file=out)
        if args.read:
            return await _read(link, [_point(n) for n in args.read], {}, args.uris, out)
        if spec is not None and args.browse is None:
            return await _read(link, _configured(spec, config, getattr(args, "machine", None)),
                               _roles(config, spec.name), args.uris, out)
        return await _browse(link, args.browse or "i=85", args.depth, args.max, args.uris, out)
    except LinkError as exc:
        print(str(exc), file=out)
        return 1
    finally:
        await link.close()


# ------------------------------------------------------------------------------ settings


def _connection(args: argparse.Namespace, config: AgentConfig | None) -> ConnectionSpec | None:
    if config is None:
        if not args.url:
            raise _Usage("give --url opc.tcp://host:port, or --config with an OPC UA connection")
        return None
    conns = {n: c for n, c in config.connections.items() if c.protocol == "opcua"}
    name = args.connection
    machine = getattr(args, "machine", None)
    if machine is not None:
        if machine not in config.machines:
            raise _Usage(f"no machine {machine!r} in {config.path}")
        name = config.machines[machine].connection
    if name is None:
        if len(conns) != 1:
            raise _Usage(f"{config.path} has {len(conns)} OPC UA connections: choose one with --connection")
        name = next(iter(conns))
    if name not in conns:
        raise _Usage(f"{name!r} is not an OPC UA connection of {config.path}")
    return conns[name]


def _settings(args: argparse.Namespace, spec: ConnectionSpec | None) -> OpcUaConnection:
    settings: dict[str, Any] = {}
    if spec is not None:
        assert isinstance(spec.config, OpcUaConnection)
        settings = spec.config.model_dump(exclude_unset=True)
    for arg, key in _DEVICE_ARGS.items():
        if getattr(args, arg, None) is not None:
            settings[key] = getattr(args, arg)
    if args.username:
        settings["auth"] = "username"
    try:
        if "timeout" in settings:
            settings["timeout"] = parse_duration(settings["timeout"])
        return OpcUaConnection.model_validate(settings)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'server'}: {e['msg']}" for e in exc.errors()]
        raise _Usage("; ".join(problems)) from None
    except ValueError as exc:
        raise _Usage(f"timeout: {exc}") from None


def _credentials(args: argparse.Namespace, spec: ConnectionSpec | None, cfg: OpcUaConnection) -> Credentials:
    name = spec.name if spec is not None else None
    key_password = connection_secret(name, "key_password") if name else None
    if cfg.auth == "anonymous":
        return Credentials(key_password=key_password)
    if args.username:
        password = os.environ.get(PASSWORD_ENV)
        if password is None and sys.stdin.isatty():
            password = getpass.getpass(f"Password of {args.username} on {cfg.url}: ")
        if password is None:
            raise _Usage(f"--username needs the password in {PASSWORD_ENV}")
        return Credentials(args.username, password, key_password)
    assert name is not None
    username, password = connection_secret(name, "username"), connection_secret(name, "password")
    if username is None or password is None:
        raise _Usage(f"connection {name} logs in with a user name: set its secrets "
                     f"(see docs/configuration.md) or give --username")
    return Credentials(username, password, key_password)


def _point(text: str) -> Point:
    """A node given on the command line: a NodeId, else a browse path."""
    try:
        tag = OpcUaTag.model_validate({"node" if "=" in text.split(";", 1)[0] else "path": text})
    except ValidationError as exc:
        raise LinkError(f"{text}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    return Point.of(TagBinding(text, tag))


def _configured(spec: ConnectionSpec, config: AgentConfig | None, machine: str | None) -> list[Point]:
    roles = _roles(config, spec.name)
    return [Point.of(b) for k, b in spec.tags.items()
            if machine is None or any(r.startswith(machine + " ") for r in roles.get(k, []))]


def _roles(config: AgentConfig | None, connection: str) -> dict[str, list[str]]:
    """Tag key -> the machine roles it plays, e.g. "OVEN-02 counter"."""
    return tag_roles(config.machines.values(), connection) if config else {}


# ------------------------------------------------------------------------------ output


def _header(link: Link, cfg: OpcUaConnection, out: TextIO) -> None:
    print(f"OPC UA server {cfg.url}, security {cfg.security}, auth {cfg.auth}", file=out)
    if link.server_certificate is not None:
        print(f"Server certificate: {describe_certificate(link.server_certificate)}", file=out)
    print("Namespaces:", file=out)
    for index, uri in enumerate(link.namespaces):
        print(f"  {index:>3}  {uri}", file=out)
    print(file=out)


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _node_text(nodeid: ua.NodeId, namespaces: Sequence[str], uris: bool) -> str:
    text = nodeid.to_string()
    if uris and nodeid.NamespaceIndex and nodeid.NamespaceIndex < len(namespaces):
        text = text.replace(f"ns={nodeid.NamespaceIndex};", f"nsu={namespaces[nodeid.NamespaceIndex]};", 1)
    return text


def _value(dv: ua.DataValue | None, enums: dict[int, str] | None = None) -> str:
    if dv is None:
        return ""
    status = status_name(dv.StatusCode)
    if status != "Good":
        return f"BAD: {describe(status)}" if status in NODE_INVALID else f"BAD: {status}"
    raw = dv.Value.Value if dv.Value is not None else None
    if raw is None:
        return "null"
    if isinstance(raw, list):
        shown = ", ".join(str(v) for v in raw[:8])
        return f"[{shown}{', ...' if len(raw) > 8 else ''}] ({len(raw)} values: add index: to pick one)"
    try:
        value = scalar(raw)
    except UnusableValue as exc:
        return f"({exc})"
    text = f"{value:.7g}" if isinstance(value, float) else str(value)
    if enums and isinstance(value, int) and value in enums:
        text += f" ({enums[value]})"
    return text


@dataclass
class _Types:
    """Data type names (and enumeration values), read from the server once each."""

    link: Link
    names: dict[ua.NodeId, str]
    enums: dict[ua.NodeId, dict[int, str]]

    async def name(self, datatype: ua.NodeId) -> str:
        if datatype not in self.names:
            if datatype.NamespaceIndex == 0 and isinstance(datatype.Identifier, int):
                self.names[datatype] = ObjectIdNames.get(datatype.Identifier, datatype.to_string())
            else:
                node = self.link.client.get_node(datatype)
                try:
                    self.names[datatype] = (await node.read_browse_name()).Name or datatype.to_string()
                    definition = await node.read_data_type_definition()
                except Exception:
                    definition = None
                    self.names.setdefault(datatype, datatype.to_string())
                if isinstance(definition, ua.EnumDefinition):
                    self.enums[datatype] = {int(f.Value): str(f.Name) for f in definition.Fields}
        return self.names[datatype]


async def _attributes(link: Link,
                      nodes: Sequence[ua.NodeId]) -> tuple[list[ua.DataValue], list[ua.DataValue]]:
    """(Value, DataType) of each node."""
    by_key = {str(i): n for i, n in enumerate(nodes)}
    values = await link.read(by_key)
    types = await link.read(by_key, AttributeIds.DataType)
    return [values[k] for k in by_key], [types[k] for k in by_key]


async def _read(link: Link, points: Sequence[Point], roles: dict[str, list[str]], uris: bool,
                out: TextIO) -> int:
    nodes, failed = await link.resolve(points)
    values, types = await _attributes(link, list(nodes.values()))
    found = dict(zip(nodes, zip(values, types, strict=True), strict=True))
    catalog = _Types(link, {}, {})
    rows = [["role", "tag", "NodeId", "data type", "value", "source time"]] if roles else \
        [["node", "NodeId", "data type", "value", "source time"]]
    for p in points:
        role = [", ".join(roles.get(p.key, ["-"]))] if roles else []
        if p.key in failed:
            rows.append([*role, p.address, "-", "-", f"BAD: {failed[p.key]}", ""])
            continue
        dv, dtype = found[p.key]
        datatype = dtype.Value.Value if dtype.Value is not None else None
        type_name = await catalog.name(datatype) if isinstance(datatype, ua.NodeId) else "-"
        stamp = dv.SourceTimestamp.isoformat(timespec="milliseconds") if dv.SourceTimestamp else ""
        rows.append([*role, p.address, _node_text(nodes[p.key], link.namespaces, uris), type_name,
                     _value(dv, catalog.enums.get(datatype) if datatype else None), stamp])
    _table(rows, out)
    bad = len(failed) + sum(1 for dv, _ in found.values() if status_name(dv.StatusCode) != "Good")
    return 1 if bad else 0


async def _browse(link: Link, start: str, depth: int, limit: int, uris: bool, out: TextIO) -> int:
    point = _point(start)
    nodes, failed = await link.resolve([point])
    if failed:
        print(f"{start} {failed[point.key]}", file=out)
        return 1
    root = link.client.get_node(nodes[point.key])
    with link.mapped():
        entries = [(0, root.nodeid, (await root.read_browse_name()).to_string(),
                    (await root.read_node_class()).name)]
        skipped = await _walk(root, 1, depth, limit, entries, skip_server=root.nodeid == OBJECTS)
    variables = [e[1] for e in entries if e[3] == "Variable"]
    values, types = await _attributes(link, variables)
    attrs = dict(zip(variables, zip(values, types, strict=True), strict=True))
    catalog = _Types(link, {}, {})
    rows = [["NodeId", "browse name", "class", "data type", "value"]]
    for level, nodeid, name, cls in entries:
        dv, dtype = attrs.get(nodeid, (None, None))
        datatype = dtype.Value.Value if dtype is not None and dtype.Value is not None else None
        type_name = await catalog.name(datatype) if isinstance(datatype, ua.NodeId) else ""
        rows.append(["  " * level + _node_text(nodeid, link.namespaces, uris), name, cls, type_name,
                     _value(dv, catalog.enums.get(datatype) if datatype else None)])
    _table(rows, out)
    if skipped:
        print(f"\n({skipped})", file=out)
    print("\nIn the tag map: {node: \"<NodeId>\"}, or {path: \"Objects/2:Name/2:Child\"} with the browse "
          "names; nsu=<namespace URI> (--uris) keeps working when the server renumbers its namespaces.",
          file=out)
    return 0


Entry = tuple[int, ua.NodeId, str, str]  # level, node, browse name, node class


async def _walk(node: Node, level: int, depth: int, limit: int, entries: list[Entry],
                skip_server: bool = False) -> str:
    """Depth-first below `node`, children in the server's order; returns a note on what was left out."""
    note = ""
    if level > depth:
        return note
    for ref in await node.get_children_descriptions():
        if len(entries) >= limit:
            return f"stopped after {limit} nodes: raise --max or browse from a deeper node"
        target = ref.NodeId
        child = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
        if skip_server and child == SERVER_OBJECT:
            note = "the Server object (i=2253) is left out: browse from i=2253 to see it"
            continue
        entries.append((level, child, ref.BrowseName.to_string(), ref.NodeClass.name))
        note = await _walk(node.new_node(node.session, child), level + 1, depth, limit, entries) or note
    return note
