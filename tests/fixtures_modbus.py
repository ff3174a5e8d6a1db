"""Modbus test fixtures: the test server (tests/modbus_server.py) in another process, and a recording ctx."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.model import Quality, Reading
from agent.sources.base import SourceContext, TagBinding
from agent.sources.modbus.config import ModbusConnection, ModbusTag
from agent.sources.modbus.decode import Order, encode
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


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
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.modbus_server", *args], cwd=ROOT, env=env,
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
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

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


@dataclass
class Recorder:
    """A SourceContext whose emit collects readings and whose state reports are kept in order."""

    readings: list[Reading] = field(default_factory=list)
    batches: list[tuple[float, list[Reading]]] = field(default_factory=list)
    states: list[tuple[str, str]] = field(default_factory=list)

    def ctx(self, metrics: Any = None) -> SourceContext:
        async def emit(readings: Sequence[Reading], *, durable: bool = False) -> None:
            self.readings.extend(readings)
            self.batches.append((time.monotonic(), list(readings)))

        return SourceContext(
            emit=emit,
            connection_up=lambda name: self.states.append(("up", name)),
            connection_down=lambda name, why: self.states.append(("down", why)),
            secret=lambda conn, key: None,
            metrics=metrics,
        )

    def good(self, key: str) -> list[Any]:
        return [r.value for r in self.readings if r.tag == key and r.quality is Quality.GOOD]

    def bad(self, key: str) -> list[Reading]:
        return [r for r in self.readings if r.tag == key and r.quality is Quality.BAD]

    def assert_one_reading_per_tag(self, tags: Sequence[TagBinding]) -> None:
        """Every batch (poll cycle) carries exactly one reading of every tag."""
        for _, batch in self.batches:
            assert sorted(r.tag for r in batch) == sorted(t.key for t in tags)

    def last(self, key: str) -> Reading | None:
        return next((r for r in reversed(self.readings) if r.tag == key), None)


def binding(**spec: Any) -> TagBinding:
    """A tag binding as agent.config would build it (the key is the spec, as there)."""
    tag = ModbusTag.model_validate(spec)
    key = json.dumps(tag.model_dump(mode="json", exclude_none=True), sort_keys=True)
    return TagBinding(key, tag)


def tcp(server: ModbusServer, **settings: Any) -> ModbusConnection:
    return ModbusConnection.model_validate({"host": "127.0.0.1", "port": server.port, **settings})


async def wait_for(predicate: Callable[[], object], within: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate` on the event loop until true; fail the test with `what` after `within` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(source: Any) -> Any:
    """Run `source.run()` in a task for the block, and cancel it (awaited) afterwards."""
    task = asyncio.create_task(source.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
