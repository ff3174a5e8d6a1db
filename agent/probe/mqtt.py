"""`prodsmart-edge probe mqtt`: watch a broker's topics, raw or as the tag map would read them.

Two uses:
- a broker (`--host`, `--topic plant/#`, optionally `--json count`): every message with its
  payload and the value the agent would take from it;
- a configuration (`--config`, optionally `--machine` or `--connection`): the configured topics,
  each message shown per machine role with its decoded value or why it cannot be used.
The probe never disturbs the running agent: its own client id, a clean session and QoS 0, so
the agent's persistent session and the messages queued for it are left alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

import paho.mqtt.client as mqtt

from agent.config.specs import AgentConfig, ConnectionSpec, MachineSpec, tag_roles
from agent.probe.common import Usage
from agent.sources.mqtt.config import MqttConnection, MqttTag, MqttTls
from agent.sources.mqtt.link import MqttLink
from agent.sources.mqtt.linktypes import LinkError, LinkSettings
from agent.sources.mqtt.payload import Decoder, PayloadError
from agent.sources.mqtt.source import tls_factory
from agent.sources.mqtt.topics import Router, filter_problem

PASSWORD_ENV = "PRODSMART_EDGE_PROBE_PASSWORD"  # never on the command line: it would show in `ps`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    broker = parser.add_argument_group("broker (instead of, or overriding, a configured connection)")
    broker.add_argument("--connection", help="with --config: the MQTT connection to watch")
    broker.add_argument("--host", help="MQTT broker host name or address")
    broker.add_argument("--port", type=int, help="TCP port (default 1883, 8883 with TLS)")
    # dest: `protocol` is the CLI's own (probe modbus|opcua|mqtt)
    broker.add_argument("--protocol", dest="mqtt_protocol", choices=["3.1.1", "5"],
                        help="MQTT version (default 3.1.1)")
    broker.add_argument("--username", help=f"user name; the password is read from ${PASSWORD_ENV}")
    broker.add_argument("--tls", action="store_true", help="TLS with the system's CA certificates")
    broker.add_argument("--ca-file", help="TLS: the CA certificate (PEM) that signed the broker's")
    broker.add_argument("--cert-file", help="TLS: client certificate (PEM)")
    broker.add_argument("--key-file", help="TLS: client private key (PEM)")
    what = parser.add_argument_group("what to watch")
    what.add_argument("--topic", action="append", help="topic filter, repeatable (default #: everything)")
    what.add_argument("--json", help="JSON path of the value in the payloads, e.g. data.count")
    what.add_argument("--seconds", type=float, default=10.0, help="how long to watch (default 10)")
    what.add_argument("--messages", type=int, default=0, help="stop after this many messages")



@dataclass(frozen=True, slots=True)
class _Watch:
    """A topic filter and how to read it: for which machine role, with which decoder."""

    label: str
    decoder: Decoder
    raw: bool = False  # no tag map: show the payload itself too


async def run(args: argparse.Namespace, config: AgentConfig | None, out: TextIO) -> int:
    try:
        conn, name, watches = _plan(args, config)
    except Usage as exc:
        print(f"probe mqtt: {exc}", file=out)
        return 2
    settings = _settings(args, conn, name)
    link = MqttLink(settings)
    try:
        await link.connect()
        filters = sorted({f for f, _ in watches})
        granted = await link.subscribe(filters, qos=0)
        refused = [g.topic_filter for g in granted if g.qos is None]
        print(f"Connected to {settings.where} (MQTT {settings.protocol}) as {settings.client_id}; watching "
              f"{len(filters)} topic filter(s) for {args.seconds:g}s.", file=out)
        if refused:
            print(f"The broker refused the subscription to: {', '.join(refused)}", file=out)
        seen = await _watch(link, Router(watches), args.seconds, args.messages, out)
    except LinkError as exc:
        print(f"{exc.sentence} ({exc.detail})" if exc.detail else exc.sentence, file=out)
        return 1
    finally:
        await link.close()
    if not seen:
        print("No message arrived: check the topics (a wildcard such as plant/# helps) and that the "
              "publisher is running.", file=out)
    return 0


def _plan(args: argparse.Namespace, config: AgentConfig | None
          ) -> tuple[MqttConnection, str | None, list[tuple[str, _Watch]]]:
    """The connection settings, its name in the configuration, and the (filter, watch) pairs."""
    if args.topic or config is None:
        if args.host is None and config is None:
            raise Usage("give --host (and --topic, default #), or --config to watch the configured topics")
        spec = _connection(args, config) if config is not None and args.host is None else None
        conn = spec.config if spec is not None else MqttConnection.model_validate({"host": args.host})
        assert isinstance(conn, MqttConnection)
        for topic in args.topic or ():
            problem = filter_problem(topic)
            if problem is not None:
                raise Usage(f"--topic {topic}: {problem}")
        watch = _Watch("(payload)", Decoder(args.json, None), raw=True)
        return conn, spec.name if spec else None, [(t, watch) for t in args.topic or ["#"]]
    spec = _connection(args, config)
    assert isinstance(spec.config, MqttConnection)
    labels = _labels(config.machines.values(), spec.name, args.machine)
    watches: list[tuple[str, _Watch]] = []
    for key, binding in spec.tags.items():
        tag = binding.spec
        if key not in labels or not isinstance(tag, MqttTag):
            continue
        numeric = bool({"counter", "waste"} & set(binding.roles))
        decoder = Decoder(tag.json_path, tag.type, numeric=numeric, id_path=tag.id, time_path=tag.timestamp)
        watches += [(tag.topic, _Watch(label, decoder)) for label in labels[key]]
    if not watches:
        raise Usage(f"no MQTT tag of {args.machine or spec.name} in the configuration")
    return spec.config, spec.name, watches


def _connection(args: argparse.Namespace, config: AgentConfig) -> ConnectionSpec:
    mqtt_conns = {n: c for n, c in config.connections.items() if c.protocol == "mqtt"}
    wanted = args.connection
    if getattr(args, "machine", None):
        machine = config.machines.get(args.machine)
        if machine is None:
            raise Usage(f"no machine {args.machine!r} in the configuration")
        wanted = machine.connection
    if wanted is not None:
        if wanted not in mqtt_conns:
            raise Usage(f"{wanted!r} is not an MQTT connection of the configuration")
        return mqtt_conns[wanted]
    if len(mqtt_conns) != 1:
        names = ", ".join(mqtt_conns) or "none"
        raise Usage(f"choose a connection with --connection or --machine (MQTT connections: {names})")
    return next(iter(mqtt_conns.values()))


def _labels(machines: Iterable[MachineSpec], connection: str, only: str | None) -> dict[str, list[str]]:
    """Tag key -> "MACHINE role" labels, for the machines of one connection."""
    return tag_roles(machines, connection, only)


def _settings(args: argparse.Namespace, conn: MqttConnection, name: str | None) -> LinkSettings:
    from agent.config.secrets import connection_secret  # the CLI side of secrets: environment, credentials

    def secret(field: str) -> str | None:
        return connection_secret(name, field) if name is not None else None

    tls = conn.tls
    if args.tls or args.ca_file or args.cert_file:
        tls = MqttTls(ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file)
    port = args.port or conn.port or (8883 if tls is not None else 1883)
    username = args.username or secret("username")
    password = os.environ.get(PASSWORD_ENV) if args.username else secret("password")
    return LinkSettings(
        host=args.host or conn.host, port=port, client_id=f"prodsmart-edge-probe-{os.getpid()}",
        protocol=args.mqtt_protocol or conn.protocol, keepalive=round(conn.keepalive),
        connect_timeout=conn.connect_timeout, persistent=False, username=username, password=password,
        tls=tls_factory(tls, secret("key_password")) if tls is not None else None,
    )


async def _watch(link: MqttLink, router: Router[_Watch], seconds: float, limit: int, out: TextIO) -> int:
    """Print messages until the time is up or `limit` messages arrived; returns how many."""
    seen = 0
    header = False
    try:
        async with asyncio.timeout(seconds):
            while not limit or seen < limit:
                for message in await link.next_batch(100):
                    if not header:
                        print(f"{'TIME':<13} {'TOPIC':<34} {'READ AS':<26} {'VALUE':<16} NOTE", file=out)
                        header = True
                    _show(message, router, out)
                    seen += 1
                    if limit and seen >= limit:
                        break
    except TimeoutError:
        pass
    return seen


def _show(message: mqtt.MQTTMessage, router: Router[_Watch], out: TextIO) -> None:
    try:
        topic = message.topic
    except UnicodeDecodeError:
        topic = "(topic not UTF-8)"
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    lead = f"{stamp:<13} {_cut(topic, 34):<34}"
    for watch in router.lookup(topic) or (_Watch("(no tag)", Decoder(None, None), raw=True),):
        notes = ["retained"] if message.retain else []
        try:
            decoded = watch.decoder.decode(message.payload)
            value = repr(decoded.value)
            notes += [f"id {decoded.msg_id}"] if decoded.msg_id is not None else []
            notes += [decoded.problem] if decoded.problem else []
        except PayloadError as exc:
            value = "-"
            notes.append(f"unusable: {exc}")
        if watch.raw:
            notes.insert(0, f"payload {_cut(repr(bytes(message.payload)), 50)}")
        print(f"{lead} {watch.label:<26} {_cut(value, 16):<16} {'; '.join(notes)}".rstrip(), file=out)
        lead = " " * 48


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
