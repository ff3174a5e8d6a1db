"""Modbus test fixtures: the test server (tests/support/modbus_server.py) in another process; a recorder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.sources.base import TagBinding
from agent.sources.modbus.config import ModbusConnection, ModbusTag
from agent.sources.modbus.decode import Order, encode
from tests.conftest import free_port
from tests.support.sourcekit import Recorder, kill_process, running, wait_for  # noqa: F401 - re-exported

ROOT = Path(__file__).resolve().parents[2]


class ModbusServer:
    """The test server process; `set`/`delay`/`garble` drive it through its stdin."""

    def __init__(self, port: int, spec: dict[str, Any] | None = None, pty: bool = False) -> None:
        self.port = port
        self.spec = spec or {"units": {"1": {}}}
        self.pty = pty
        self.device = ""  # with pty: the serial device the client opens
        self.proc: subprocess.Popen[str] | None = None
        self._writes: list[dict[str, Any]] = []  # replayed after a restart: the PLC keeps its values

    def start(self) -> ModbusServer:
        args = ["--spec", json.dumps(self.spec)]
        args += ["--pty"] if self.pty else ["--port", str(self.port)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.modbus_server", *args],
                                     cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        word, _, self.device = self.proc.stdout.readline().strip().partition(" ")
        if word != "ready":
            self.stop()
            raise RuntimeError(f"the Modbus test server did not start: {word!r}")
        for cmd in self._writes:
            self._command(cmd)
        return self

    def stop(self) -> None:
        """Kill the process (SIGKILL: a PLC losing power) and reap it."""
        proc, self.proc = self.proc, None
        kill_process(proc)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _command(self, cmd: dict[str, Any]) -> str:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer.startswith("ok"):
            raise RuntimeError(f"the Modbus test server refused {cmd}: {answer!r}")
        return answer

    def set(self, unit: int, table: str, offset: int, values: Sequence[int | bool]) -> None:
        """Write values (also while stopped: they are applied when it starts again)."""
        cmd = {"op": "set", "unit": unit, "table": table, "offset": offset, "values": list(values)}
        self._writes.append(cmd)
        if self.proc is not None:
            self._command(cmd)

    def set_value(self, unit: int, table: str, offset: int, value: float, type_name: str,
                  order: Order = "ABCD") -> None:
        self.set(unit, table, offset, encode(value, type_name, order))

    def delay(self, unit: int, seconds: float, table: str = "*") -> None:
        self._command({"op": "delay", "unit": unit, "seconds": seconds, "table": table})

    def garble(self, unit: int, mode: str, count: int = 1) -> None:
        self._command({"op": "garble", "unit": unit, "mode": mode, "count": count})

    def holes(self, unit: int, holes: dict[str, list[tuple[int, int]]]) -> None:
        self._command({"op": "holes", "unit": unit, "holes": holes})

    def kill_unit(self, unit: int, dead: bool = True) -> None:
        self._command({"op": "dead", "unit": unit, "dead": dead})

    def fail(self, unit: int, code: int, count: int = 1) -> None:
        self._command({"op": "fail", "unit": unit, "code": code, "count": count})

    def requests(self) -> int:
        return int(self._command({"op": "stats"}).split()[1])


@pytest.fixture
def modbus_server() -> Iterator[Callable[..., ModbusServer]]:
    """A factory: `modbus_server(spec)` starts a server on a free port; all are stopped after the test."""
    servers: list[ModbusServer] = []

    def start(spec: dict[str, Any] | None = None, pty: bool = False) -> ModbusServer:
        server = ModbusServer(free_port(), spec, pty).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def binding(**spec: Any) -> TagBinding:
    """A tag binding as agent.config.loader would build it (the key is the spec, as there)."""
    tag = ModbusTag.model_validate(spec)
    key = json.dumps(tag.model_dump(mode="json", exclude_none=True), sort_keys=True)
    return TagBinding(key, tag)


def tcp(server: ModbusServer, **settings: Any) -> ModbusConnection:
    return ModbusConnection.model_validate({"host": "127.0.0.1", "port": server.port, **settings})


