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
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from agent.config.secrets import connection_secret
from agent.config.specs import AgentConfig, ConnectionSpec
from agent.core.schema import parse_duration
from agent.probe.common import Usage, roles_of
from agent.probe.opcua_nodes import browse, read
from agent.sources.base import TagBinding
from agent.sources.opcua.config import OpcUaConnection, OpcUaTag
from agent.sources.opcua.errors import LinkError
from agent.sources.opcua.link import Link, Point
from agent.sources.opcua.security import Credentials, Trust, describe_certificate
from agent.sources.opcua.source import quiet_library_logs

PASSWORD_ENV = "PRODSMART_EDGE_PROBE_PASSWORD"
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


async def run(args: argparse.Namespace, config: AgentConfig | None, out: TextIO) -> int:
    quiet_library_logs()
    try:
        spec = _connection(args, config)
        cfg = _settings(args, spec)
        creds = _credentials(args, spec, cfg)
    except Usage as exc:
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
            return await read(link, [_point(n) for n in args.read], {}, args.uris, out)
        if spec is not None and args.browse is None:
            return await read(link, _configured(spec, config, getattr(args, "machine", None)),
                               roles_of(config, spec.name), args.uris, out)
        start = args.browse or "i=85"
        return await browse(link, _point(start), start, args.depth, args.max, args.uris, out)
    except LinkError as exc:
        print(str(exc), file=out)
        return 1
    finally:
        await link.close()


# ------------------------------------------------------------------------------ settings


def _connection(args: argparse.Namespace, config: AgentConfig | None) -> ConnectionSpec | None:
    if config is None:
        if not args.url:
            raise Usage("give --url opc.tcp://host:port, or --config with an OPC UA connection")
        return None
    conns = {n: c for n, c in config.connections.items() if c.protocol == "opcua"}
    name = args.connection
    machine = getattr(args, "machine", None)
    if machine is not None:
        if machine not in config.machines:
            raise Usage(f"no machine {machine!r} in {config.path}")
        name = config.machines[machine].connection
    if name is None:
        if len(conns) != 1:
            raise Usage(f"{config.path} has {len(conns)} OPC UA connections: choose one with --connection")
        name = next(iter(conns))
    if name not in conns:
        raise Usage(f"{name!r} is not an OPC UA connection of {config.path}")
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
        raise Usage("; ".join(problems)) from None
    except ValueError as exc:
        raise Usage(f"timeout: {exc}") from None


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
            raise Usage(f"--username needs the password in {PASSWORD_ENV}")
        return Credentials(args.username, password, key_password)
    assert name is not None
    username, password = connection_secret(name, "username"), connection_secret(name, "password")
    if username is None or password is None:
        raise Usage(f"connection {name} logs in with a user name: set its secrets "
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
    roles = roles_of(config, spec.name)
    return [Point.of(b) for k, b in spec.tags.items()
            if machine is None or any(r.startswith(machine + " ") for r in roles.get(k, []))]


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
