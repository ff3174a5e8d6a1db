"""OPC UA test fixtures: the test server (tests/support/opcua_server.py) in another process,
test certificates, and a recording source context."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.sources.base import TagBinding
from agent.sources.opcua.config import OpcUaConnection, OpcUaTag
from tests.conftest import free_port
from tests.support.sourcekit import Recorder, kill_process, wait_for  # noqa: F401 - re-exported
from tests.support.sourcekit import running as _running

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "urn:prodsmart-edge:test"
CLIENT_URI = "urn:prodsmart-edge:test-client"
SERVER_URI = "urn:prodsmart-edge:test-plc"


class OpcUaServer:
    """The test server process; `set`/`status`/`delete`... drive it through its stdin."""

    def __init__(self, port: int, machines: int = 2, secure: Path | None = None, bench: int = 0,
                 rate: float = 10.0) -> None:
        self.port = port
        self.machines = machines
        self.secure = secure
        self.bench = bench
        self.rate = rate
        self.ns = 0
        self.proc: subprocess.Popen[str] | None = None
        self.values: dict[str, Any] = {}  # replayed after a restart: the PLC keeps its values
        self._log = tempfile.NamedTemporaryFile(prefix="opcua-server-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/test"

    def start(self, shift: int = 0) -> OpcUaServer:
        args = ["--port", str(self.port), "--machines", str(self.machines), "--shift", str(shift),
                "--values", json.dumps(self.values)]
        if self.secure is not None:
            args += ["--secure", str(self.secure)]
        if self.bench:
            args += ["--bench", str(self.bench), "--rate", str(self.rate)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.opcua_server", *args],
                                     cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"the OPC UA test server did not start: {line!r}\n{self.errors()}")
        self.ns = int(line.split()[1])
        return self

    def stop(self) -> None:
        """Kill the process (SIGKILL: a PLC losing power) and reap it."""
        proc, self.proc = self.proc, None
        kill_process(proc)

    def freeze(self, frozen: bool = True) -> None:
        """SIGSTOP / SIGCONT: a server that hangs with its connections open (no FIN, no answer)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def errors(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def command(self, cmd: dict[str, Any]) -> str:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer.startswith("ok"):
            raise RuntimeError(f"the OPC UA test server refused {cmd}: {answer!r}")
        return answer

    def set(self, node: str, value: Any) -> None:
        self.values[node] = value
        if self.proc is not None:
            self.command({"op": "set", "node": node, "value": value})

    def status(self, node: str, status: str) -> None:
        self.command({"op": "status", "node": node, "status": status})

    def delete(self, node: str) -> None:
        self.command({"op": "delete", "node": node})

    def restore(self, node: str) -> None:
        self.command({"op": "restore", "node": node})

    def silence(self) -> None:
        self.command({"op": "silence"})

    def expire(self) -> None:
        self.command({"op": "expire"})

    def sessions(self) -> int:
        return int(self.command({"op": "sessions"}).split()[1])

    def ticks(self) -> int:
        return int(self.command({"op": "ticks"}).split()[1])

    def node(self, key: str) -> str:
        """The NodeId string of a test variable, with the namespace index of this run."""
        return f"ns={self.ns};s={key}"


@pytest.fixture
def opcua_server() -> Iterator[Callable[..., OpcUaServer]]:
    """A factory: `opcua_server(machines=2, secure=None)` starts a server on a free port; all are
    stopped after the test."""
    servers: list[OpcUaServer] = []

    def start(shift: int = 0, **kwargs: Any) -> OpcUaServer:
        server = OpcUaServer(free_port(), **kwargs)
        servers.append(server)
        return server.start(shift)

    yield start
    for server in servers:
        server.close()


# ----------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    """Generated test certificates: the agent's (client) and the server's, and the server's folder."""

    client_cert: Path
    client_key: Path
    server_cert: Path
    server_folder: Path  # server.der, server.pem, trusted/<client cert>, password
    password: str


def _pair(folder: Path, stem: str, uri: str, extended: list[x509.ObjectIdentifier]) -> tuple[Path, Path]:
    key = cert_gen.generate_private_key()
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost"),
                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = cert_gen.generate_self_signed_app_certificate(key, stem, {}, sans, extended, days=30)
    cert_path, key_path = folder / f"{stem}.der", folder / f"{stem}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


def make_pki(root: Path, password: str = "s3cret-Pa55") -> Pki:
    server_folder = root / "server"
    (server_folder / "trusted").mkdir(parents=True)
    agent = root / "agent"
    agent.mkdir()
    client_cert, client_key = _pair(agent, "agent", CLIENT_URI, [ExtendedKeyUsageOID.CLIENT_AUTH])
    server_cert, _ = _pair(server_folder, "server", SERVER_URI, [ExtendedKeyUsageOID.SERVER_AUTH])
    (server_folder / "trusted" / "agent.der").write_bytes(client_cert.read_bytes())
    (server_folder / "password").write_text(password)
    return Pki(client_cert, client_key, server_cert, server_folder, password)


def not_after(path: Path) -> dt.datetime:
    return x509.load_der_x509_certificate(path.read_bytes()).not_valid_after_utc


# ----------------------------------------------------------------------------- source side


def binding(**spec: Any) -> TagBinding:
    """A tag binding as agent.config.loader would build it (the key is the spec, as there)."""
    tag = OpcUaTag.model_validate(spec)
    key = json.dumps(tag.model_dump(mode="json", exclude_none=True), sort_keys=True)
    return TagBinding(key, tag)


def connection(server: OpcUaServer, **settings: Any) -> OpcUaConnection:
    """Settings for tests: short intervals so that faults show within a second or two."""
    base: dict[str, Any] = {"url": server.url, "sampling": 0.05, "publishing": 0.05, "timeout": 2.0,
                            "keepalive": 1.0, "stale_after": 3.0, "retry_max": 2.0, "retry_nodes": 1.0}
    return OpcUaConnection.model_validate({**base, **settings})


def running(source: Any) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    """Run an OPC UA source for the block; it must leave no task (its own or asyncua's) behind."""
    return _running(source, no_leftovers=True)
