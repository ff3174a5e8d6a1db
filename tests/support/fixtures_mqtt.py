"""A real Mosquitto broker on a free loopback port, restartable within a test, and a test publisher."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config.loader import parse_config
from agent.config.specs import MachineSpec
from agent.core.metrics import Metrics
from agent.core.model import Reading, Scalar
from agent.sources.base import SourceContext, TagBinding
from agent.sources.mqtt.config import MqttConnection
from agent.sources.mqtt.source import MqttSource
from tests.conftest import free_port
from tests.support.sourcekit import running  # noqa: F401 - re-exported
from tests.support.sourcekit import wait_for as until  # noqa: F401 - re-exported

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Mosquitto:
    """`mosquitto -c <generated conf>` with persistence in `folder`; `stop()` saves its database."""

    def __init__(self, folder: Path, port: int | None = None, extra: str = "",
                 anonymous: bool = True, inflight: int = 200) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "mosquitto.log"
        data = folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            "persistence true\n"
            f"persistence_location {data}/\n"
            "autosave_interval 1\n"
            # Mosquitto keeps 1000 queued messages per client by default and drops the rest:
            # a flood test would lose messages at the broker, not in the agent.
            "max_queued_messages 0\n"
            f"max_inflight_messages {inflight}\n"
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"  # as root it would switch to `mosquitto`
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{extra}\n",
            encoding="utf-8",
        )

    def start(self, timeout: float = 10.0) -> Mosquitto:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    msg = f"mosquitto does not listen on {self.port}: {self.log_text()}"
                    raise RuntimeError(msg) from None
                time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves sessions and queued messages to disk, then exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        yield broker
    finally:
        broker.stop()


class Publisher:
    """A blocking paho publisher (in the test's thread) that waits for each PUBACK batch."""

    def __init__(self, port: int, client_id: str = "test-publisher",
                 protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
                 tls: Pki | None = None) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if tls is not None:
            self.client.tls_set(str(tls.ca), str(tls.client_cert), str(tls.client_key))
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> None:
        self.many([(topic, payload)], qos=qos, retain=retain)

    def many(self, items: Sequence[tuple[str, str | bytes]], qos: int = 1, retain: bool = False,
             timeout: float = 20.0) -> None:
        for start in range(0, len(items), 10_000):  # packet ids are 16 bits: keep well below 65535 pending
            chunk = items[start:start + 10_000]
            infos = [self.client.publish(t, p, qos=qos, retain=retain) for t, p in chunk]
            for info in infos:
                info.wait_for_publish(timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: a broker it is asked to trust is an impostor


def make_pki(folder: Path) -> Pki:
    """A CA, a broker certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
             ca: bool, san: list[x509.GeneralName] | None = None) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def write(stem: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        crt, pem = folder / f"{stem}.crt", folder / f"{stem}.key"
        crt.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        return crt, pem

    ca_key, other_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca, _ = write("ca", cert("Test CA", ca_key, "Test CA", ca_key, True), ca_key)
    other, _ = write("other-ca", cert("Other CA", other_key, "Other CA", other_key, True), other_key)
    san: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                   x509.DNSName("localhost")]
    server = write("server", cert("127.0.0.1", server_key, "Test CA", ca_key, False, san), server_key)
    client = write("client", cert("agent", client_key, "Test CA", ca_key, False), client_key)
    return Pki(ca, *server, *client, other)


class Recorder:
    """What the service gives a source, recording readings as if each emit were a SQLite commit.

    `delay` makes each durable emit take that long (a slow disk); `crash()` cancels the emits
    in progress, as a killed process would never finish them: those readings are not recorded.
    """

    def __init__(self, delay: float = 0.0, secrets: dict[str, str] | None = None) -> None:
        self.readings: list[Reading] = []
        self.states: list[tuple[bool, str]] = []
        self.metrics = Metrics()
        self.delay = delay
        self.secrets = secrets or {}
        self.durable_calls = 0
        self._pending: set[asyncio.Task[None]] = set()

    async def emit(self, readings: Sequence[Reading], *, durable: bool = False) -> None:
        self.durable_calls += durable
        task = asyncio.ensure_future(self._commit(list(readings)))
        self._pending.add(task)
        try:
            await task
        finally:
            self._pending.discard(task)

    async def _commit(self, readings: list[Reading]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.readings.extend(readings)

    def crash(self) -> None:
        for task in self._pending:
            task.cancel()

    def context(self) -> SourceContext:
        return SourceContext(
            emit=self.emit,
            connection_up=lambda name: self.states.append((True, "")),
            connection_down=lambda name, why: self.states.append((False, why)),
            secret=lambda name, field: self.secrets.get(field),
            metrics=self.metrics,
        )

    @property
    def up(self) -> bool:
        return bool(self.states) and self.states[-1][0]

    def values(self, key: str) -> list[Scalar | None]:
        return [r.value for r in self.readings if r.tag == key]

    def payload_errors(self) -> float:
        value = self.metrics.registry.get_sample_value("prodsmart_edge_payload_errors_total",
                                                       {"connection": "broker"})
        return value or 0.0


@dataclass
class Line:
    """A configured MQTT connection: its settings and tag bindings, as the service would build them."""

    config: MqttConnection
    tags: list[TagBinding]
    machines: dict[str, MachineSpec]

    def key(self, machine: str, role: str = "counter") -> str:
        spec = self.machines[machine]
        if role == "counter":
            assert spec.counter is not None
            return spec.counter.tag
        if role == "running":
            assert spec.running is not None
            return spec.running.tag
        if role == "stop_reason":
            assert spec.stop_reason.tag is not None
            return spec.stop_reason.tag
        return spec.parameters[role].tag

    def source(self, recorder: Recorder) -> MqttSource:
        return MqttSource("broker", self.config, self.tags, recorder.context())


def line(port: int, machines: str, settings: str = "") -> Line:
    """Parse a tag map (the `machines:` section) for one MQTT connection named `broker`."""
    text = (f"connections:\n  broker:\n    mqtt: {{host: 127.0.0.1, port: {port}, "
            f"client_id: agent-under-test, reconnect_min: 100ms, reconnect_max: 500ms{settings}}}\n"
            f"machines:\n{machines}")
    cfg = parse_config(text, "agent.yaml")
    conn = cfg.connections["broker"]
    deltas = {c.tag for m in cfg.machines.values() for c in [m.counter, *m.waste.values()]
              if c is not None and c.mode == "delta"}
    tags = []
    for binding in conn.tags.values():
        # Until agent/config/loader.py marks delta counters in the roles, mark them here as it will.
        if binding.key in deltas and "delta" not in binding.roles:
            binding = TagBinding(binding.key, binding.spec, (*binding.roles, "delta"))
        tags.append(binding)
    assert isinstance(conn.config, MqttConnection)
    return Line(conn.config, tags, dict(cfg.machines))


