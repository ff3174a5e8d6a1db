"""One MQTT connection: paho-mqtt driven by the asyncio loop, with acknowledgements under our control.

Why paho-mqtt directly and not aiomqtt (2.5.1): nothing may be lost, so a QoS 1 message is
acknowledged (PUBACK) only once its reading is committed to SQLite. paho-mqtt 2.x supports that
(`manual_ack=True` + `Client.ack`), aiomqtt 2.5.1 does not expose it (empicano/aiomqtt#345, the
PR #346 is still a draft; the known workaround reaches into its private `_client`). aiomqtt
also hides the DUP flag we need to recognise a redelivery, and costs an asyncio task per
message. This bridge is the small part of aiomqtt we need: the socket is watched by the loop
(`add_reader` / `add_writer`), `loop_misc` runs once a second for the keep-alive, and only the
blocking connect (DNS, TCP, TLS handshake) runs in a worker thread.

One `MqttLink` is one connection attempt; the source builds a new one to reconnect, so paho's
own reconnection is never used (`reconnect_on_failure=False`, no `loop_forever`).

What a link is given and what it raises (settings, errors, grants) is in `agent.sources.mqtt.linktypes`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.sources.mqtt.linktypes import ConnectRefused, Granted, LinkError, LinkLost, LinkSettings

log = logging.getLogger(__name__)

READS_PER_WAKEUP = 256  # packets read per readable event before the loop serves other tasks
MAX_INBOX = 2_000  # messages waiting for the source; beyond, the socket rests (TCP backpressure)
CLOSE_TIMEOUT = 2.0
DISCONNECT = b"\xe0\x00"  # MQTT DISCONNECT, no properties: normal disconnection


class MqttLink:
    """A connected paho client fed by the event loop; received messages wait in `inbox`."""

    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        self._loop = asyncio.get_running_loop()
        self._client = self._new_client()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mqtt-connect")
        self._connack: asyncio.Future[tuple[ReasonCode, bool]] = self._loop.create_future()
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._inbox: list[mqtt.MQTTMessage] = []
        self._waiter: asyncio.Future[None] | None = None
        self._lost: LinkLost | None = None
        self._fd: int | None = None
        self._misc: asyncio.TimerHandle | None = None
        self._forgotten: set[str] = set()
        self._paused = False
        self.received = 0

    # ------------------------------------------------------------------ setup
    def _new_client(self) -> mqtt.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else not s.persistent,
            reconnect_on_failure=False,  # the source alone reconnects, with its backoff
            manual_ack=True,  # PUBACK only after the reading is committed (see module docstring)
        )
        client.connect_timeout = s.connect_timeout
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _blocking_connect(self) -> None:
        """Runs in the worker thread: DNS, TCP, TLS handshake, CONNECT written."""
        s = self.settings
        opened: list[ssl.SSLSocket] = []
        if s.tls is not None:
            context = s.tls()
            wrap = context.wrap_socket

            def tracked(*args: Any, **kwargs: Any) -> ssl.SSLSocket:
                sock = wrap(*args, **kwargs)
                opened.append(sock)
                return sock

            # paho leaves the socket open when the TLS handshake fails: we close it ourselves.
            context.wrap_socket = tracked  # type: ignore[method-assign]
            self._client.tls_set_context(context)
        try:
            self._send_connect()
        except BaseException:
            for sock in opened:
                sock.close()
            raise

    def _send_connect(self) -> None:
        s = self.settings
        if s.protocol != "5":  # 3.1.1: clean_session was given to the client
            self._client.connect(s.host, s.port, s.keepalive)
            return
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = s.session_expiry if s.persistent else 0
        self._client.connect(s.host, s.port, s.keepalive, clean_start=not s.persistent,
                             properties=properties)

    async def connect(self) -> bool:
        """Connect and wait for CONNACK; returns whether the broker still had our session."""
        cf = self._executor.submit(self._blocking_connect)
        try:
            await asyncio.wrap_future(cf)
        except asyncio.CancelledError:
            cf.add_done_callback(lambda _: self._drop_socket())  # the thread ends on its own
            raise
        except ssl.SSLError as exc:
            raise LinkError(f"TLS with the MQTT broker at {self.settings.where} failed", str(exc)) from None
        except OSError as exc:
            raise LinkError(f"Cannot reach the MQTT broker at {self.settings.where}",
                            exc.strerror or str(exc) or type(exc).__name__) from None
        except ValueError as exc:  # paho: bad host or port
            raise LinkError(f"Cannot connect to the MQTT broker at {self.settings.where}", str(exc)) from None
        self._watch_socket()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                code, present = await asyncio.shield(self._connack)
        except TimeoutError:
            raise LinkError(f"The MQTT broker at {self.settings.where} did not answer the connection",
                            f"no CONNACK within {self.settings.connect_timeout:g}s") from None
        if code.is_failure:
            raise ConnectRefused(f"The MQTT broker at {self.settings.where} refused the connection: {code}",
                                 f"CONNACK reason code {code.value}")
        return present

    def _watch_socket(self) -> None:
        sock = self._client.socket()
        if sock is None:
            raise LinkError(f"Cannot reach the MQTT broker at {self.settings.where}", "no socket")
        self._fd = sock.fileno()
        client = self._client
        client.on_socket_register_write = lambda *_: self._want_write(True)
        client.on_socket_unregister_write = lambda *_: self._want_write(False)
        client.on_socket_close = lambda *_: self._unwatch()
        self._loop.add_reader(self._fd, self._on_readable)
        if client.want_write():  # the CONNECT did not fit in one write
            self._loop.add_writer(self._fd, self._on_writable)
        self._misc = self._loop.call_later(1.0, self._on_misc)

    def _want_write(self, on: bool) -> None:
        if self._fd is None:
            return
        if on:
            self._loop.add_writer(self._fd, self._on_writable)
        else:
            self._loop.remove_writer(self._fd)

    def _unwatch(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = None
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    def _drop_socket(self) -> None:
        sock = self._client.socket()
        if sock is not None:
            sock.close()

    # ------------------------------------------------------------------ socket events
    def _on_readable(self) -> None:
        client = self._client
        try:
            for _ in range(READS_PER_WAKEUP):
                before = self.received
                if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or self._fd is None or self._paused:
                    return
                if self.received == before and not _tls_pending(client):
                    return
            if _tls_pending(client):  # decrypted bytes wait inside ssl: the fd will not wake us
                self._loop.call_soon(self._on_readable)
        except Exception as exc:  # paho raises socket errors from here; that is a lost connection
            self._fail(str(exc) or type(exc).__name__)

    def _on_writable(self) -> None:
        try:
            self._client.loop_write()
        except Exception as exc:
            self._fail(str(exc) or type(exc).__name__)

    def _on_misc(self) -> None:
        try:
            rc = self._client.loop_misc()  # sends PINGREQ, closes when the PINGRESP is overdue
        except Exception as exc:
            self._fail(str(exc) or type(exc).__name__)
            return
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._fd is not None:
            self._misc = self._loop.call_later(1.0, self._on_misc)

    # ------------------------------------------------------------------ paho callbacks
    def _on_connect(self, _c: Any, _u: Any, flags: mqtt.ConnectFlags, code: ReasonCode, _p: Any) -> None:
        if not self._connack.done():
            self._connack.set_result((code, bool(flags.session_present)))

    def _on_disconnect(self, _c: Any, _u: Any, flags: mqtt.DisconnectFlags, code: ReasonCode,
                       _p: Any) -> None:
        if flags.is_disconnect_packet_from_server:
            self._fail(f"the broker disconnected us: {code}")
        elif str(code) == "Unspecified error":  # how paho reports a socket closed under it
            self._fail("the connection was closed by the broker or the network")
        else:
            self._fail(str(code))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(codes)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self._inbox.append(message)
        self.received += 1
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if len(self._inbox) >= MAX_INBOX and not self._paused and self._fd is not None:
            # A broker that lets us hold unlimited unacknowledged messages (max_inflight_messages 0)
            # would fill our memory with a long backlog: stop reading until the source catches up.
            self._paused = True
            self._loop.remove_reader(self._fd)

    def _fail(self, detail: str) -> None:
        if self._lost is None:
            self._lost = LinkLost(f"Lost the connection to the MQTT broker at {self.settings.where}", detail)
        self._unwatch()
        if not self._connack.done():
            self._connack.set_exception(self._lost)
            self._connack.exception()  # retrieved here: connect() may be waiting in its timeout
        for future in self._subacks.values():
            if not future.done():
                future.set_exception(self._lost)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # ------------------------------------------------------------------ use
    @property
    def alive(self) -> bool:
        return self._lost is None and self._fd is not None

    async def subscribe(self, filters: Sequence[str], qos: int = 1) -> list[Granted]:
        """Subscribe to every filter (one SUBSCRIBE packet) and return what the broker granted."""
        if not filters:
            return []
        rc, mid = self._client.subscribe([(f, qos) for f in filters])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise self._lost or LinkLost(f"Cannot subscribe at the MQTT broker {self.settings.where}",
                                         str(rc))
        future: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._subacks[mid] = future
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                codes = await future
        except TimeoutError:
            raise LinkError(f"The MQTT broker at {self.settings.where} did not answer the subscription",
                            f"no SUBACK within {self.settings.connect_timeout:g}s") from None
        finally:
            self._subacks.pop(mid, None)
        return [Granted(f, None if c.is_failure else c.value, str(c))
                for f, c in zip(filters, codes, strict=False)]

    async def next_batch(self, limit: int, *, fill: int = 1, within: float = 0.0,
                         quiet: float = 0.0) -> list[mqtt.MQTTMessage]:
        """The messages received so far (at least one, at most `limit`), oldest first.

        `fill`, `within`, `quiet`: once a message is there, wait up to `within` seconds for `fill`
        of them, so that one commit (and one burst of PUBACKs) covers them all; stop waiting as
        soon as none came for `quiet` seconds (the broker may be holding the rest until it gets
        our acknowledgements: its in-flight window can be smaller than `fill`)."""
        await self._wait_for(1)
        deadline = self._loop.time() + within
        while len(self._inbox) < fill and self._lost is None:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                break
            have = len(self._inbox)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, quiet) if quiet > 0 else remaining):
                    await self._wait_for(have + 1)
            if len(self._inbox) == have:
                break
        batch, self._inbox = self._inbox[:limit], self._inbox[limit:]
        if self._paused and len(self._inbox) < MAX_INBOX // 2 and self._fd is not None:
            self._paused = False
            self._loop.add_reader(self._fd, self._on_readable)
            self._loop.call_soon(self._on_readable)  # TLS may hold decrypted bytes the fd does not show
        return batch

    async def _wait_for(self, count: int) -> None:
        """Until the inbox holds `count` messages; raises the loss of the link if it has none."""
        while len(self._inbox) < count:
            if self._lost is not None:
                if self._inbox:
                    return  # what came before the loss is still to be handled
                raise self._lost
            self._waiter = self._loop.create_future()
            await self._waiter

    def forget(self, topic: str) -> None:
        """Unsubscribe a topic nothing wants any more (once per connection; no waiting for UNSUBACK)."""
        if topic not in self._forgotten and self.alive:
            self._forgotten.add(topic)
            log.debug("unsubscribing %s: no tag uses it (a subscription of an older tag map)", topic)
            self._client.unsubscribe(topic)

    def ack(self, message: mqtt.MQTTMessage) -> bool:
        """Send the PUBACK of a QoS 1 message; False when the connection is gone meanwhile."""
        if not self.alive:
            return False
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)
        return True

    def flush(self) -> None:
        """Write what paho has queued (PUBACKs) now, not at the next writable event: a source
        stopped or killed right after a commit must not leave its acknowledgements unsent."""
        if self._fd is None:
            return
        try:
            self._client.loop_write()
        except Exception as exc:  # a socket error here is a lost connection
            self._fail(str(exc) or type(exc).__name__)

    async def close(self) -> None:
        """Disconnect cleanly: PUBACKs first, then DISCONNECT, then wait for the broker to close.

        paho would write DISCONNECT and close the socket at once; with unread messages in our
        receive buffer the kernel then sends a reset, and the broker may drop the PUBACKs it has
        not read yet: committed messages would be delivered again. So the agent writes
        DISCONNECT itself, half-closes (FIN after everything it wrote) and reads until the
        broker, having read all of it, closes its side."""
        try:
            self.flush()
            sock: Any = self._client.socket()
            if self.alive and sock is not None and not self._client.want_write():
                self._unwatch()
                with contextlib.suppress(OSError):
                    sock.send(DISCONNECT)  # two bytes, the same in MQTT 3.1.1 and 5
                    sock.shutdown(socket.SHUT_WR)
                    await self._until_eof(sock)
        finally:
            self._lost = self._lost or LinkLost("closed")
            self._unwatch()
            self._drop_socket()
            self._executor.shutdown(wait=False)

    async def _until_eof(self, sock: Any) -> None:
        """Read and discard until the broker closes the connection (at most CLOSE_TIMEOUT)."""
        readable = asyncio.Event()
        fd = sock.fileno()
        self._loop.add_reader(fd, readable.set)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                while True:
                    await readable.wait()
                    readable.clear()
                    try:
                        if not sock.recv(65536):
                            return
                    except (BlockingIOError, ssl.SSLWantReadError):
                        continue
        except (TimeoutError, OSError):
            pass
        finally:
            self._loop.remove_reader(fd)


def _tls_pending(client: mqtt.Client) -> bool:
    sock = client.socket()
    pending = getattr(sock, "pending", None)
    return bool(pending is not None and pending() > 0)
