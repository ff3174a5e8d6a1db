"""The technician's commands run beside a live agent process: they never change what the agent knows.

Issue 10 items 7 and 8: `status` and `dead-letters list` only read; `run --dry-run` leaves the
database exactly as it found it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from agent.sandbox import Fault, SandboxOptions
from tests.conftest import free_port
from tests.support.harness import ROOT, AgentProcess, agent_env, start_sandbox, wait_until, write_config

COUNT_ONLY = """
prodsmart: {{url: {url}, auth: {auth}, timeout: 10s, retry_min: 100ms, retry_max: 1s}}
storage: {{path: {db}, commit_interval: 100ms}}
metrics: {{listen: "127.0.0.1:{metrics}"}}
connections:
  sim:
    simulated: {{seed: 5, poll: 100ms, rate: 20, cycle: 1000s, stopped: 0s}}
machines:
  M1:
    connection: sim
    counter: {{signal: count, unit: a}}
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def _rows(db: Path) -> dict[str, list[Any]]:
    """Every row of every table, read through a read-only connection."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in sorted(tables)}


def _in_flight(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return bool(con.execute("SELECT 1 FROM calls WHERE inflight = 1").fetchall())
    except sqlite3.Error:
        return False


def test_status_beside_the_agent_leaves_its_calls_in_flight(tmp_path: Path) -> None:
    """The counter call is in flight (its token request held 5 s, then refused with a 504: the
    call never left) while `status` and `dead-letters list` run. Prodsmart already holds a
    higher count, so the call's genuine "not increasing" must end as a dead letter: the CLI must
    not have marked it "unknown outcome" (which turns that 400 into "already delivered")."""
    sandbox = start_sandbox(SandboxOptions(machines={"M1": ["Stopped"]}))
    options = sandbox.options
    httpx.post(f"{sandbox.url}/api/machines/M1/counter", json={"count": 1_000_000},
               auth=(options.api_key, options.api_secret), timeout=5).raise_for_status()
    sandbox.inject(Fault("timeout", delay=5.0, endpoint="authorization", count=1))
    db = tmp_path / "agent.db"
    config = write_config(tmp_path / "agent.yaml", COUNT_ONLY.format(
        url=sandbox.url, auth="token", db=db, metrics=free_port()))
    try:
        with AgentProcess(config, agent_env(sandbox)) as agent:
            wait_until(lambda: _in_flight(db), 20, message="a counter call in flight")
            status = _cli("status", str(config))
            assert status.returncode == 0, status.stderr
            assert "agent: running" in status.stdout
            assert _cli("dead-letters", str(config), "list").returncode == 0
            assert _in_flight(db), "the CLI changed the live agent's call"
            wait_until(lambda: "HTTP 400" in _cli("dead-letters", str(config), "list").stdout, 30,
                       message=f"the genuine 400 kept as a dead letter\n{agent.output()}")
            assert "already applied" not in agent.output()
            assert sandbox.ledger().counters["M1"]["count"] == 1_000_000
    finally:
        sandbox.stop()


def test_a_dry_run_leaves_the_database_as_it_found_it(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    config = write_config(tmp_path / "agent.yaml", COUNT_ONLY.format(
        url="http://127.0.0.1:9", auth="basic", db=db, metrics=free_port()))
    # A real agent that cannot reach Prodsmart: counts are queued, run state persisted.
    with AgentProcess(config, agent_env()) as agent:
        wait_until(lambda: "Cannot deliver" in agent.output(), 20, message="a queued call")
        assert agent.terminate() == 0
    before = _rows(db)
    assert before["calls"], "nothing queued to begin with"
    digest = hashlib.sha256(db.read_bytes()).hexdigest()

    env = agent_env()
    env.pop("PRODSMART_API_KEY")
    with AgentProcess(config, env, args=["--dry-run"]) as dry:
        wait_until(lambda: dry.output().count("POST /api/machines/M1/counter") >= 2, 20,
                   message="printed calls")
        assert dry.terminate() == 0
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert _rows(db) == before

    # A dry run on a machine that has no database yet creates none.
    fresh = write_config(tmp_path / "fresh.yaml", COUNT_ONLY.format(
        url="http://127.0.0.1:9", auth="basic", db=tmp_path / "none.db", metrics=free_port()))
    with AgentProcess(fresh, env, args=["--dry-run"]) as dry:
        wait_until(lambda: "POST /api/machines/M1/counter" in dry.output(), 20, message="a printed call")
        assert dry.terminate() == 0
    assert not list(tmp_path.glob("none.db*"))
