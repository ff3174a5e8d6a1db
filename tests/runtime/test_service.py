"""The agent started the way systemd starts it: notify socket, watchdog, SIGTERM, SIGHUP reload."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent.config.loader import load_config
from agent.sources.simulated.config import SimulatedConnection
from agent.sources.simulated.source import SimulatedPlc
from tests.conftest import free_port
from tests.support.harness import ROOT, AgentProcess, agent_env, start_sandbox, wait_until, write_config

BASE = """
prodsmart: {{url: {url}, timeout: 2s, retry_min: 100ms, retry_max: 1s}}
storage: {{path: {db}, commit_interval: 100ms}}
metrics: {{listen: "127.0.0.1:{metrics}"}}
health: {{max_connection_down: 30s, max_pending_age: 3s}}
connections:
  sim:
    simulated: {{seed: 3, poll: 100ms, rate: 25, cycle: 600s, stopped: 1s, start_at: {start}}}
machines:
  M1:
    connection: sim
    counter: {{signal: count, unit: a}}
    parameters:
      temperature: {{signal: temperature, unit: a, deadband: 0.01}}
"""
EXTRA = """  M2:
    connection: sim
    counter: {signal: count, unit: b}
"""


class NotifySocket:
    """What systemd listens on: a datagram socket whose messages a thread collects, like systemd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._done.is_set():
            try:
                self.messages.extend(self.sock.recv(4096).decode().splitlines())
            except TimeoutError:
                continue

    def seen(self, prefix: str) -> list[str]:
        return [m for m in list(self.messages) if m.startswith(prefix)]

    def close(self) -> None:
        self._done.set()
        self._thread.join(2)
        self.sock.close()


def _queued(config: Path, machine: str) -> int:
    out = subprocess.run([sys.executable, "-m", "agent", "status", str(config)], capture_output=True,
                         text=True, timeout=30, cwd=ROOT).stdout
    line = next((x for x in out.splitlines() if x.startswith(machine + " ")), None)
    return int(line.split()[1]) if line and line.split()[1].isdigit() else 0


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    sandbox = start_sandbox()
    notify = NotifySocket(tmp_path / "notify.sock")
    metrics = free_port()
    text = BASE.format(url=sandbox.url, db=tmp_path / "agent.db", metrics=metrics, start=time.time())
    config = write_config(tmp_path / "agent.yaml", text)
    env = agent_env(sandbox, {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
    agent = AgentProcess(config, env)
    yield sandbox, notify, agent, config, text, f"http://127.0.0.1:{metrics}"
    agent.close()
    notify.close()
    sandbox.stop()


def test_ready_watchdog_status_metrics_and_clean_stop(setup) -> None:  # type: ignore[no-untyped-def]
    sandbox, notify, agent, config, _text, http = setup
    agent.start()
    wait_until(lambda: notify.seen("READY=1"), 20, message="READY=1")
    wait_until(lambda: len(notify.seen("WATCHDOG=1")) >= 3, 10, message="three WATCHDOG=1 pings")
    status = wait_until(lambda: notify.seen("STATUS=connections up"), 10, message="STATUS=")
    assert "queued calls" in status[-1]
    wait_until(lambda: (sandbox.ledger().counters.get("M1") or {}).get("count"), 20, message="counts")

    code, body = _get(f"{http}/metrics")
    assert code == 200
    assert (_metric(body, "prodsmart_edge_readings_total", connection="sim") or 0) > 10
    assert _metric(body, "prodsmart_edge_connection_up", connection="sim") == 1.0
    assert (_metric(body, "prodsmart_edge_calls_total", endpoint="counter", status="200") or 0) >= 1
    code, body = _get(f"{http}/healthz")
    assert code == 200 and json.loads(body)["healthy"] is True

    # An outage: calls wait, /healthz turns unhealthy once the oldest waits too long.
    from agent.sandbox import Fault
    sandbox.inject(Fault(kind="outage", seconds=30.0))
    code, body = wait_until(lambda: (r := _get(f"{http}/healthz"))[0] == 503 and r, 20,
                            message="/healthz to report the stuck queue")
    assert "oldest queued call" in " ".join(json.loads(body)["problems"])
    sandbox.clear_faults()
    wait_until(lambda: _get(f"{http}/healthz")[0] == 200, 20, message="/healthz to recover")

    agent.signal(signal.SIGTERM)
    assert agent.wait(20) == 0, agent.output()
    assert notify.seen("STOPPING=1")
    assert "Traceback" not in agent.output()
    # Nothing lost: what the PLC produced up to the stop is in Prodsmart or still queued;
    # a second run sends the rest.
    cfg = load_config(config).connections["sim"].config
    assert isinstance(cfg, SimulatedConnection)
    at_stop = SimulatedPlc(cfg, "a").produced(time.time())
    agent.start()
    wait_until(lambda: sandbox.ledger().counters["M1"]["count"] >= at_stop, 20,
               message=f"count >= {at_stop} after the restart")


def test_reload_valid_and_invalid_tag_maps(setup) -> None:  # type: ignore[no-untyped-def]
    sandbox, notify, agent, config, text, _http = setup
    agent.start()
    wait_until(lambda: notify.seen("READY=1"), 20, message="READY=1")
    wait_until(lambda: (sandbox.ledger().counters.get("M1") or {}).get("count"), 20, message="M1 counts")

    write_config(config, text.replace("    counter: {signal: count, unit: a}",
                                      "    counter: {signal: count, unit: a, typo: 1}"))
    agent.signal(signal.SIGHUP)
    wait_until(lambda: "Reload refused" in agent.output(), 10, message="the refusal in the log")
    assert "typo" in agent.output()
    before = sandbox.ledger().counters["M1"]["count"]
    wait_until(lambda: sandbox.ledger().counters["M1"]["count"] > before, 10, message="M1 still counting")

    write_config(config, text + EXTRA)
    agent.signal(signal.SIGHUP)
    wait_until(lambda: "Configuration reloaded" in agent.output(), 10, message="reload")
    assert len(notify.seen("RELOADING=1")) == 2 and len(notify.seen("READY=1")) == 3
    wait_until(lambda: (sandbox.ledger().counters.get("M2") or {}).get("count"), 20, message="M2 counts")
    # M1 went on from its total: never a count lower than or equal to one already sent.
    rejected = [r for r in sandbox.ledger().rejected if r["status"] == 400]
    assert rejected == []

    # A machine removed while calls of it wait keeps them until they are delivered.
    from agent.sandbox import Fault
    sandbox.inject(Fault(kind="outage", seconds=60.0))
    wait_until(lambda: _queued(config, "M1") > 0, 10, message="M1 calls queued during the outage")
    write_config(config, text.replace("  M1:\n", "  M0:\n") + EXTRA)  # M1 renamed away: removed
    agent.signal(signal.SIGHUP)
    wait_until(lambda: agent.output().count("Configuration reloaded") == 2, 10, message="second reload")
    before = sandbox.ledger().counters["M1"]["count"]
    sandbox.clear_faults()
    wait_until(lambda: _queued(config, "M1") == 0, 20, message="M1's queue to drain")
    assert sandbox.ledger().counters["M1"]["count"] > before
    assert agent.running
