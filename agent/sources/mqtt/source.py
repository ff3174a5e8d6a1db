"""The MQTT source: subscribes to the tag map's topics and turns each message into readings.

Delivery guarantees (QoS 1, persistent session):
- The broker keeps our session (fixed client id, clean_session=False / clean_start=False with a
  session expiry), so what is published while the agent restarts waits for it.
- A message is acknowledged only after `ctx.emit(..., durable=True)` returned, i.e. once its
  effect is committed to SQLite: a crash before that makes the broker deliver it again.
- A message committed whose PUBACK was lost with the connection comes back with the DUP flag
  and the same packet id; `Redeliveries` recognises it (see there for the exact rule).
- Retained messages replayed on subscribing are applied to cumulative totals (the machine logic
  compares them with its persisted baseline) but never to delta counters: a delta's first,
  live delivery was already counted, and one from before our subscription is not ours to count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt

from agent.core.backoff import Backoff
from agent.core.model import Quality, Reading
from agent.sources.base import SourceContext, TagBinding
from agent.sources.mqtt.config import MqttConnection, MqttTag, MqttTls
from agent.sources.mqtt.link import MqttLink
from agent.sources.mqtt.linktypes import Granted, LinkError, LinkSettings
from agent.sources.mqtt.payload import Decoder, PayloadError
from agent.sources.mqtt.topics import Router, has_wildcard

log = logging.getLogger(__name__)

MAX_BATCH = 250  # messages per commit: bounds how long one batch holds the event loop
# A batch waits (at most a group commit's interval) for this many messages, so that a commit (and
# its sync) covers a burst instead of each message or two of it: half of Mosquitto's default
# in-flight window (max_inflight_messages 20), RabbitMQ's whole one (prefetch 10). It stops waiting
# once no message came for ACK_QUIET seconds: a broker with a smaller window waits for our PUBACKs
# (and the next batch waits for no more than this one had). 50 ms, not less: a burst often
# reaches us as one message, then the rest ~40 ms later (Nagle's algorithm at the broker waiting
# for our delayed TCP ACK).
ACK_BATCH = 10
ACK_QUIET = 0.05
COMMIT_GRACE = 5.0  # seconds a stopping source waits for a commit in progress, to ack it
COMPLAINT_PERIOD = 60.0  # a payload problem is logged once per topic per minute
MAX_COMPLAINT_TOPICS = 1000


@dataclass(frozen=True, slots=True)
class _Route:
    key: str
    topic: str
    decoder: Decoder
    delta: bool  # a `mode: delta` counter: retained replays are never applied
    wildcard: bool
    total: bool  # a cumulative counter: several topics feeding it would mix their totals


def _route(binding: TagBinding) -> _Route:
    spec = binding.spec
    assert isinstance(spec, MqttTag)
    counter = bool({"counter", "waste"} & set(binding.roles))
    delta = "delta" in binding.roles
    decoder = Decoder(spec.json_path, spec.type, numeric=counter, id_path=spec.id, time_path=spec.timestamp)
    return _Route(binding.key, spec.topic, decoder, delta, has_wildcard(spec.topic), counter and not delta)


def default_client_id(connection: str) -> str:
    """prodsmart-edge-<host name>-<connection>: fixed across restarts, unique per line PC."""
    raw = f"prodsmart-edge-{socket.gethostname()}-{connection}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", raw)


def tls_factory(tls: MqttTls, key_password: str | None) -> Callable[[], ssl.SSLContext]:
    """A builder of the TLS context, run in the connect thread because it reads files."""

    def build() -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=tls.ca_file)
            if tls.cert_file is not None:
                context.load_cert_chain(tls.cert_file, tls.key_file, key_password)
        except (OSError, ssl.SSLError) as exc:
            raise LinkError("Cannot load the TLS certificate files of the MQTT connection",
                            getattr(exc, "strerror", None) or str(exc)) from None
        context.check_hostname = tls.verify_hostname
        return context

    return build


class _Complaints:
    """Counts unusable payloads and logs them at most once per topic per minute."""

    def __init__(self, connection: str, metrics: Any) -> None:
        self.connection = connection
        self.counter = metrics.parse_errors.labels(connection) if metrics is not None else None
        self.last: dict[str, tuple[float, int]] = {}  # topic -> (last logged, not logged since)

    def report(self, topic: str, problem: str, now: float) -> None:
        if self.counter is not None:
            self.counter.inc()
        logged, quiet = self.last.get(topic, (-COMPLAINT_PERIOD, 0))
        if now - logged < COMPLAINT_PERIOD:
            self.last[topic] = (logged, quiet + 1)
            return
        if len(self.last) >= MAX_COMPLAINT_TOPICS:  # a flood on countless topics: forget the old ones
            self.last = {t: v for t, v in self.last.items() if now - v[0] < COMPLAINT_PERIOD}
            if len(self.last) >= MAX_COMPLAINT_TOPICS:
                self.last.clear()
        self.last[topic] = (now, 0)
        more = f" ({quiet} more on this topic since the last report)" if quiet else ""
        log.warning("%s: cannot use a message on %s: %s%s", self.connection, topic, problem, more)


class Redeliveries:
    """What this session committed, to recognise the broker's redeliveries (DUP flag, same packet id).

    - Committed but never acknowledged (the connection was gone at ack time): the broker cannot
      have reused that packet id, so a DUP with it is certainly the same message: skipped.
    - Acknowledged, but the PUBACK may have been lost with the connection: a DUP with the same
      id, topic and payload is that message or an identical one reusing the id. Skipping it is
      harmless for totals, states and parameters (the same value again; skipping keeps a stale
      total from looking like a counter reset), but could lose a real increment of a delta
      counter: deltas are applied again, and their `id` lets the logic drop the duplicate.
    Kept across reconnections while the broker keeps the session (packet ids are per session).
    """

    def __init__(self) -> None:
        self.acked: dict[int, int] = {}  # packet id -> hash of (topic, payload); at most 65535
        self.unacked: set[int] = set()

    def forget(self) -> None:
        self.acked.clear()
        self.unacked.clear()

    def check(self, message: mqtt.MQTTMessage, content: int) -> Literal["new", "replay", "same"]:
        if not message.dup:
            return "new"
        if message.mid in self.unacked:
            self.unacked.discard(message.mid)
            return "same"
        return "replay" if self.acked.get(message.mid) == content else "new"

    def committed(self, mid: int, content: int, acked: bool) -> None:
        if acked:
            self.acked[mid] = content
            self.unacked.discard(mid)
        else:
            self.unacked.add(mid)


@dataclass(frozen=True, slots=True)
class _Mark:
    """A message of a batch, to settle once the batch is committed."""

    message: mqtt.MQTTMessage
    content: int


class MqttSource:
    """One broker connection: connect, subscribe, commit readings, acknowledge; reconnect with backoff."""

    def __init__(self, name: str, config: MqttConnection, tags: Sequence[TagBinding],
                 ctx: SourceContext) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        bindings = [(b, b.spec) for b in tags if isinstance(b.spec, MqttTag)]
        self.filters = sorted({spec.topic for _, spec in bindings})
        self.router: Router[_Route] = Router([(spec.topic, _route(b)) for b, spec in bindings])
        self.complaints = _Complaints(name, ctx.metrics)
        self.where = f"{config.host}:{config.effective_port}"
        self.redeliveries = Redeliveries()
        self._feeds: dict[str, str] = {}  # wildcard total tag -> the one topic feeding it
        self._reported: tuple[str, ...] = ()
        self._connections = 0

    def settings(self) -> LinkSettings:
        c = self.config
        secret = self.ctx.secret
        return LinkSettings(
            host=c.host, port=c.effective_port, client_id=c.client_id or default_client_id(self.name),
            protocol=c.protocol, keepalive=round(c.keepalive), connect_timeout=c.connect_timeout,
            session_expiry=round(c.session_expiry), username=secret(self.name, "username"),
            password=secret(self.name, "password"),
            tls=tls_factory(c.tls, secret(self.name, "key_password")) if c.tls is not None else None,
        )

    async def run(self) -> None:
        backoff = Backoff(self.config.reconnect_min, self.config.reconnect_max)
        while True:
            link = MqttLink(self.settings())
            try:
                self._session(await link.connect())
                await self._subscribe(link)
                self.ctx.connection_up(self.name)
                backoff.reset()
                await self._consume(link)
            except LinkError as exc:
                log.debug("%s: %s", self.name, exc)
                if self.ctx.metrics is not None:
                    self.ctx.metrics.connection_errors.labels(self.name).inc()
                self.ctx.connection_down(self.name, f"{exc.sentence} ({exc.detail})" if exc.detail
                                         else exc.sentence)
            finally:
                await link.close()
            await backoff.sleep()

    def _session(self, present: bool) -> None:
        self._connections += 1
        if present:
            return
        self.redeliveries.forget()  # a new session: nothing of the old one will be redelivered
        if self._connections == 1:
            log.info("%s: new session on the MQTT broker at %s; from now on it keeps messages for the "
                     "agent while it is away", self.name, self.where)
        else:
            log.warning("%s: the MQTT broker at %s had lost the agent's session: messages published while "
                        "the connection was down are lost, except retained ones", self.name, self.where)

    async def _subscribe(self, link: MqttLink) -> None:
        granted: list[Granted] = []
        for start in range(0, len(self.filters), 100):  # keeps each SUBSCRIBE packet modest
            granted += await link.subscribe(self.filters[start:start + 100], qos=1)
        refused = tuple(f"{g.topic_filter} ({g.reason})" for g in granted if g.qos is None)
        degraded = tuple(g.topic_filter for g in granted if g.qos == 0)
        if refused + degraded != self._reported:
            self._reported = refused + degraded
            if refused:
                log.warning("%s: the MQTT broker at %s refused the subscription to %s: no data from "
                            "these topics", self.name, self.where, ", ".join(refused))
            if degraded:
                log.warning("%s: the MQTT broker at %s grants only QoS 0 for %s: messages published while "
                            "the agent is away are lost", self.name, self.where, ", ".join(degraded))

    async def _consume(self, link: MqttLink) -> None:
        fill = ACK_BATCH
        while True:
            batch = await link.next_batch(MAX_BATCH, fill=fill, within=self.ctx.commit_interval,
                                          quiet=ACK_QUIET)
            # The next batch waits for as many as this one had (up to ACK_BATCH): a broker whose
            # in-flight window is smaller sends no more before our PUBACKs, and a quiet topic
            # needs no wait; a burst that finds the batch smaller enlarges the next one.
            fill = min(ACK_BATCH, len(batch))
            readings, marks = self.decode(batch, link)
            if readings:
                await self._commit(readings, link, marks)
            self._settle(link, marks)

    async def _commit(self, readings: list[Reading], link: MqttLink, marks: list[_Mark]) -> None:
        task = asyncio.ensure_future(self.ctx.emit(readings, durable=True))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # Stopping mid-commit: let the commit finish so its PUBACKs can still go out before
            # the DISCONNECT; otherwise the broker would deliver these messages again.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task}, timeout=COMMIT_GRACE)
            if task.done() and not task.cancelled() and task.exception() is None:
                self._settle(link, marks)
            raise

    def _settle(self, link: MqttLink, marks: list[_Mark]) -> None:
        """The batch is committed: acknowledge it, and remember it to recognise redeliveries."""
        for mark in marks:
            acked = link.ack(mark.message)
            self.redeliveries.committed(mark.message.mid, mark.content, acked)
        if marks:
            link.flush()

    def decode(self, batch: Sequence[mqtt.MQTTMessage], link: MqttLink | None = None
               ) -> tuple[list[Reading], list[_Mark]]:
        """Readings of a batch, and its messages to settle; unusable payloads are counted and logged."""
        wall, mono = time.time(), time.monotonic()
        out: list[Reading] = []
        marks: list[_Mark] = []
        for message in batch:
            try:
                topic: str | None = message.topic
            except UnicodeDecodeError:
                topic = None
            content = hash((topic, bytes(message.payload)))
            if message.qos > 0:
                marks.append(_Mark(message, content))
            if topic is None:
                self.complaints.report("(not UTF-8)", "the topic is not UTF-8 text", wall)
                continue
            seen = self.redeliveries.check(message, content)
            routes = self.router.lookup(topic) if seen != "same" else ()
            if not routes and seen == "new" and link is not None:
                link.forget(topic)  # subscribed by an older tag map: the session still had it
            received = wall - max(0.0, mono - message.timestamp)
            shared: dict[str, Any] = {}  # the message's JSON, parsed once for all its tags
            for route in routes:
                if seen == "replay" and not route.delta:
                    continue
                reading = self._reading(route, topic, message, received, wall, shared)
                if reading is not None:
                    out.append(reading)
        return out, marks

    def _reading(self, route: _Route, topic: str, message: mqtt.MQTTMessage, received: float,
                 now: float, shared: dict[str, Any] | None = None) -> Reading | None:
        if route.delta and message.retain:
            log.debug("%s: retained delta on %s not applied (it is a replay)", self.name, topic)
            return None
        try:
            decoded = route.decoder.decode(message.payload, shared)
        except PayloadError as exc:
            self.complaints.report(topic, str(exc), now)
            return None
        if decoded.problem is not None:
            self.complaints.report(topic, decoded.problem, now)
        if route.total and route.wildcard:
            self._check_feed(route, topic)
        msg_id = decoded.msg_id
        if msg_id is not None and route.wildcard:
            msg_id = f"{topic}#{msg_id}"  # ids are per publisher: the topic keeps them apart
        return Reading(self.name, route.key, decoded.value, Quality.GOOD, decoded.source_time,
                       received, msg_id, redelivered=bool(message.dup))

    def _check_feed(self, route: _Route, topic: str) -> None:
        first = self._feeds.setdefault(route.key, topic)
        if first != topic and first != "":
            self._feeds[route.key] = ""  # warned once
            log.warning("%s: the counter topic filter %s receives totals from %s and %s: their totals mix; "
                        "give each machine its own topic", self.name, route.topic, first, topic)
