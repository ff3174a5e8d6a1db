"""`prodsmart-edge demo`: simulated PLCs + a local Prodsmart sandbox + the real agent, shown live."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from agent.demo.plc import OPCUA_NAMESPACE
from agent.sandbox import Sandbox, SandboxOptions

CONFIG = """# Written by `prodsmart-edge demo`: a Modbus PLC and an OPC UA PLC, simulated on loopback.
prodsmart:
  url: {url}
  requests_per_minute: 100
storage:
  path: {db}
  commit_interval: 200ms
metrics:
  listen: 127.0.0.1:{metrics}
connections:
  press-plc:
    modbus: {{host: 127.0.0.1, port: {modbus}, unit: 1, poll: 500ms}}
  oven-plc:
    opcua: {{url: "opc.tcp://127.0.0.1:{opcua}/demo", security: None}}
machines:
  PRESS-01:
    connection: press-plc
    counter: {{holding: 0, type: uint32}}
    waste:
      Scrap: {{holding: 2, type: uint16}}
    running: {{coil: 0}}
    stop_reason:
      tag: {{holding: 3, type: uint16}}
      types: {{1: Maintenance, 2: Material shortage}}
    parameters:
      die_temperature: {{input: 0, type: float32, deadband: 0.5, min_interval: 5s}}
  OVEN-02:
    connection: oven-plc
    counter: {{node: "nsu={ns};s=Oven.GoodParts", type: uint32}}
    waste:
      Scrap: {{node: "nsu={ns};s=Oven.Scrap", type: uint32}}
    running: {{node: "nsu={ns};s=Oven.Running"}}
    stop_reason:
      tag: {{node: "nsu={ns};s=Oven.StopReason"}}
      types: {{1: Maintenance, 2: Material shortage}}
    parameters:
      temperature: {{node: "nsu={ns};s=Oven.Temperature", deadband: 0.5, min_interval: 5s}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _start_plc(kind: str, port: int, log: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.demo.plc", kind, "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=log.open("ab"))
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not line.startswith(b"READY"):
        raise RuntimeError(f"the simulated {kind} PLC did not start (see {log})")
    return proc


async def _listening(port: int, agent: asyncio.subprocess.Process, wait: float = 30.0) -> None:
    """Wait until the agent's HTTP listener answers, so the console address printed works at once."""
    deadline = time.monotonic() + wait
    while agent.returncode is None and time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        writer.close()
        return


def _describe(call: dict[str, Any]) -> str:
    body = call["body"]
    if call["endpoint"] == "startstop":
        return f"{'RUNNING' if body['running'] else 'STOPPED'} ({body['type']})"
    parts = []
    if "count" in body:
        parts.append(f"count={body['count']}")
    parts += [f"{w['code']}={w['quantity']}" for w in body.get("waste", [])]
    params = body.get("parameters", [])
    parts += [f"{p.get('name', p.get('code'))}={p['value']}" for p in params]
    return " ".join(parts)


async def _show(sandbox: Sandbox, seconds: float, out: TextIO, agent: asyncio.subprocess.Process) -> None:
    seen = 0
    deadline = time.monotonic() + seconds if seconds > 0 else None
    while deadline is None or time.monotonic() < deadline:
        if agent.returncode is not None:
            out.write(f"the agent stopped (exit code {agent.returncode})\n")
            return
        ledger = sandbox.ledger()
        for call in ledger.accepted[seen:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(call["time"]))
            out.write(f"{stamp}  -> {call['machine']:<9} {call['endpoint']:<10} {_describe(call)}\n")
        seen = len(ledger.accepted)
        out.flush()
        await asyncio.sleep(0.5)


async def run_demo(seconds: float, workdir: str | None, out: TextIO) -> int:
    folder = Path(workdir or tempfile.mkdtemp(prefix="prodsmart-edge-demo-"))
    folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    sandbox = Sandbox(SandboxOptions()).start()
    procs: list[asyncio.subprocess.Process] = []
    try:
        modbus, opcua = _free_port(), _free_port()
        log = folder / "demo.log"
        procs.append(await _start_plc("modbus", modbus, log))
        procs.append(await _start_plc("opcua", opcua, log))
        config, metrics = folder / "agent.yaml", _free_port()
        config.write_text(CONFIG.format(url=sandbox.url, db=folder / "agent.db", metrics=metrics,
                                        modbus=modbus, opcua=opcua, ns=OPCUA_NAMESPACE))
        env = dict(os.environ, PRODSMART_API_KEY=sandbox.options.api_key,
                   PRODSMART_API_SECRET=sandbox.options.api_secret)
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "run", str(config), env=env, stdout=log.open("ab"),
            stderr=asyncio.subprocess.STDOUT)
        procs.append(agent)
        await _listening(metrics, agent)
        out.write(f"prodsmart-edge demo: a simulated Modbus PLC (PRESS-01, 127.0.0.1:{modbus}), a "
                  f"simulated OPC UA PLC (OVEN-02, 127.0.0.1:{opcua}) and a local Prodsmart sandbox "
                  f"({sandbox.url}).\nThe agent reads them with {config} (its log: {log}).\n"
                  f"console: http://127.0.0.1:{metrics}/\n"
                  "What Prodsmart receives, live (Ctrl-C to stop):\n")
        out.flush()
        with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
            await _show(sandbox, seconds, out, agent)
        counters = sandbox.ledger().counters
        out.write("\nProdsmart now holds: " + ", ".join(
            f"{m} count={c.get('count')}" for m, c in sorted(counters.items())) + "\n")
        return 0
    finally:
        for proc in reversed(procs):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        sandbox.stop()
