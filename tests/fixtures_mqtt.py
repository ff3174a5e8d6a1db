"""A real Mosquitto broker on a free loopback port, restartable within a test, and a test publisher."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Mosquitto:
    """`mosquitto -c <generated conf>` with persistence in `folder`; `stop()` saves its database."""

    def __init__(self, folder: Path, port: int | None = None, extra: str = "") -> None:
        self.folder = folder
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "mosquitto.log"
        data = folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {data}/\n"
            "autosave_interval 1\n"
            # Mosquitto keeps 1000 queued messages per client by default and drops the rest:
            # a flood test would lose messages at the broker, not in the agent.
            "max_queued_messages 0\n"
            "max_inflight_messages 200\n"
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

    def __init__(self, port: int, client_id: str = "test-publisher", protocol: int = mqtt.MQTTv311) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False) -> None:
        self.many([(topic, payload)], qos=qos, retain=retain)

    def many(self, items: list[tuple[str, str | bytes]], qos: int = 1, retain: bool = False,
             timeout: float = 20.0) -> None:
        infos = [self.client.publish(t, p, qos=qos, retain=retain) for t, p in items]
        for info in infos:
            info.wait_for_publish(timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
