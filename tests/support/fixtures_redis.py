"""A real redis-server on a free loopback port (optionally with a password and TLS), killable and
restartable on the same port within a test."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support.fixtures_mqtt import Pki, make_pki

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """`redis-server` without persistence; `kill()` is a crash, `start()` brings it back empty."""

    def __init__(self, folder: Path, *, password: str | None = None, pki: Pki | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.password = password
        self.pki = pki
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "redis.log"
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.pki else 'redis'}://127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        args = [REDIS_SERVER, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.folder), "--logfile", str(self.log), "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.pki:
            args += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(self.pki.server_cert), "--tls-key-file", str(self.pki.server_key),
                     "--tls-ca-cert-file", str(self.pki.ca),
                     "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        return args

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = self.log.read_text(errors="replace") if self.log.exists() else ""
                    raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: clients see the connection drop and then refused connections."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_tls(tmp_path: Path) -> Iterator[RedisServer]:
    """redis-server speaking only TLS, with a certificate from a throwaway CA, and a password."""
    pki = make_pki(tmp_path / "pki")
    server = RedisServer(tmp_path / "redis-tls", password="s3cret-pass", pki=pki).start()
    try:
        yield server
    finally:
        server.stop()
