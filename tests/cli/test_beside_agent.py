"""The technician's commands run beside a live agent process: they never change what the agent knows.

Issue 10 items 7 and 8: `status` and `dead-letters list` only read; `run --dry-run` leaves the
database exactly as it found it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx

from agent.config.loader import load_config
from agent.sandbox import Fault, SandboxOptions
from agent.sources.simulated.config import SimulatedConnection
from agent.sources.simulated.source import SimulatedPlc
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
            # The call never left (its token request failed): it thawed and merged with the parts
            # counted during the 5 s, so the first count Prodsmart saw is not the first one queued.
            first = next(r for r in sandbox.ledger().rejected if r["endpoint"] == "counter")
            assert first["body"]["count"] >= 40, first
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


REBASE = """
prodsmart: {{url: {url}, timeout: 2s, retry_min: 100ms, retry_max: 1s}}
storage: {{path: {db}, commit_interval: 100ms}}
metrics: {{listen: "127.0.0.1:{metrics}"}}
connections:
  sim:
    simulated: {{seed: 3, poll: 100ms, rate: 25, cycle: 1000s, stopped: 0s, scrap_every: 7,
                start_at: {start}, stop_at: {stop}}}
machines:
  M1:
    connection: sim
    counter: {{signal: count, unit: a}}
    waste:
      Scrap: {{signal: scrap, unit: a}}
"""


def _acked(db: Path) -> tuple[int, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        (count,), = con.execute("SELECT coalesce(acked_count, 0) FROM machines WHERE machine = 'M1'")
        scrap = con.execute("SELECT quantity FROM acked_waste WHERE machine = 'M1' AND code = 'Scrap'")
        return int(count), int(next(iter(scrap), (0,))[0])


def test_a_rebase_beside_the_agent_keeps_the_parts_it_has_not_sent(tmp_path: Path) -> None:
    """Issue 10 item 10, end to end: Prodsmart is unreachable for a while (parts queue up), its
    count is set to 100000 (and Scrap to 5000) meanwhile, and the technician rebases the running
    agent. Every part made after the last acknowledged one must reach Prodsmart above those."""
    sandbox = start_sandbox(SandboxOptions(machines={"M1": ["Stopped"]}))
    options = sandbox.options
    db = tmp_path / "agent.db"
    t0 = time.time()
    start, stop = t0 + 8.0, t0 + 18.0  # the agent must be up (its first readings) before start
    config = write_config(tmp_path / "agent.yaml", REBASE.format(
        url=sandbox.url, db=db, metrics=free_port(), start=start, stop=stop))
    cut = Fault("outage", machine="M1", count=-1)
    try:
        with AgentProcess(config, agent_env(sandbox)) as agent:
            wait_until(lambda: db.exists() and _rows(db).get("state"), 8, message="the first readings")
            assert time.time() < start, "the agent took too long to start"
            time.sleep(max(0.0, start + 3.0 - time.time()))
            sandbox.inject(cut)  # parts queue up from here
            time.sleep(2.0)
            # Someone else sets Prodsmart's counters (the sandbox is reachable for them only).
            sandbox.clear_faults()
            body = {"count": 100_000, "waste": [{"code": "Scrap", "quantity": 5_000}]}
            direct = httpx.post(f"{sandbox.url}/api/machines/M1/counter", json=body,
                                auth=(options.api_key, options.api_secret), timeout=5)
            sandbox.inject(cut)
            assert direct.status_code == 200, direct.text
            time.sleep(0.5)
            acked_count, acked_scrap = _acked(db)
            rebased = _cli("rebase", str(config), "M1", "100000", "--waste", "Scrap=5000")
            assert rebased.returncode == 0, rebased.stderr
            time.sleep(1.0)
            sandbox.clear_faults()
            plc = SimulatedPlc(_sim(config), "a")
            count = 100_000 + plc.produced(stop) - acked_count
            scrap = 5_000 + plc.scrap(stop) - acked_scrap
            assert plc.produced(stop) > acked_count + 50
            time.sleep(max(0.0, stop + 0.5 - time.time()))

            def settled() -> bool:
                counters = sandbox.ledger().counters.get("M1") or {}
                return counters.get("count") == count and counters.get("waste") == {"Scrap": scrap}

            wait_until(settled, 30, message=f"count {count}, scrap {scrap}; sandbox has "
                       f"{sandbox.ledger().counters}\n{agent.output()[-3000:]}")
            assert "no dead letters" in _cli("dead-letters", str(config), "list").stdout
    finally:
        sandbox.stop()


def _sim(config: Path) -> SimulatedConnection:
    conf = load_config(config).connections["sim"].config
    assert isinstance(conf, SimulatedConnection)
    return conf


TWO = """
prodsmart: {{url: {url}, timeout: 2s, retry_min: 100ms, retry_max: 1s}}
storage: {{path: {db}, commit_interval: 100ms}}
metrics: {{listen: "127.0.0.1:{metrics}"}}
connections:
  sim:
    simulated: {{seed: 5, poll: 100ms, rate: 20, cycle: 1000s, stopped: 0s}}
machines:
  M1: {{connection: sim, counter: {{signal: count, unit: a}}}}
  M2: {{connection: sim, counter: {{signal: count, unit: b}}}}
"""


def _health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as answer:
            data: dict[str, Any] = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        data = json.loads(exc.read())
    except OSError:
        return {}
    return data


def test_a_machine_prodsmart_forbids_waits_alone(tmp_path: Path) -> None:
    """Issue 10 item 12, end to end: the agent process keeps sending M1's counts while Prodsmart
    answers 403 to M2's calls; /healthz and one ERROR line name M2; nothing is dead-lettered."""
    sandbox = start_sandbox(SandboxOptions(machines={"M1": ["Stopped"], "M2": ["Stopped"]}))
    sandbox.inject(Fault("status", status=403, machine="M2", count=-1))
    port = free_port()
    config = write_config(tmp_path / "agent.yaml", TWO.format(url=sandbox.url, db=tmp_path / "agent.db",
                                                              metrics=port))
    try:
        with AgentProcess(config, agent_env(sandbox)) as agent:
            wait_until(lambda: any(r["status"] == 403 for r in sandbox.ledger().rejected), 20,
                       message="M2 refused")
            first = (sandbox.ledger().counters.get("M1") or {}).get("count") or 0
            wait_until(lambda: (sandbox.ledger().counters.get("M1") or {}).get("count", 0) > first + 20, 20,
                       message=f"M1 counts going on\n{agent.output()}")
            assert "Prodsmart forbids machine M2 (HTTP 403)" in _health(port).get("problems", [])
            errors = [x for x in agent.output().splitlines() if " ERROR " in x]
            assert len(errors) == 1 and "M2" in errors[0] and "403" in errors[0], errors
            assert "M2" not in sandbox.ledger().counters
            assert "no dead letters" in _cli("dead-letters", str(config), "list").stdout
    finally:
        sandbox.stop()


PARAMS = """
prodsmart: {{url: {url}, timeout: 2s, retry_min: 100ms, retry_max: 1s}}
storage: {{path: {db}, commit_interval: 100ms}}
metrics: {{listen: "127.0.0.1:{metrics}"}}
connections:
  sim:
    simulated: {{seed: 5, poll: 100ms, rate: 20, cycle: 1000s, stopped: 0s}}
machines:
  M1:
    connection: sim
    counter: {{signal: count, unit: a}}
    parameters:
      temperature: {{signal: temperature, unit: a, min_interval: 1h}}
"""


def test_a_refused_parameter_leaves_the_count_alone(tmp_path: Path) -> None:
    """Issue 10 item 11, end to end: Prodsmart refuses (400) the first counter call of M1, which
    carries the temperature. The count goes again without it; the parameter alone is a dead letter."""
    sandbox = start_sandbox(SandboxOptions(machines={"M1": ["Stopped"]}))
    # The parameters endpoint is down, so the temperature waits and rides on the first counter call.
    sandbox.inject(Fault("status", status=503, endpoint="parameters", count=-1))
    sandbox.inject(Fault("status", status=400, endpoint="counter", machine="M1", count=1))
    config = write_config(tmp_path / "agent.yaml", PARAMS.format(
        url=sandbox.url, db=tmp_path / "agent.db", metrics=free_port()))
    try:
        with AgentProcess(config, agent_env(sandbox)) as agent:
            wait_until(lambda: sandbox.ledger().counters.get("M1"), 20,
                       message=f"a refused call, then counts\n{agent.output()}")
            (refused,) = [r for r in sandbox.ledger().rejected if r["endpoint"] == "counter"]
            assert refused["body"]["parameters"][0]["name"] == "temperature", refused
            first = next(a for a in sandbox.ledger().accepted if a["endpoint"] == "counter")
            assert first["body"] == {"count": refused["body"]["count"]}  # the same count, alone
            listing = _cli("dead-letters", str(config), "list").stdout
            assert listing.count("HTTP 400") == 1 and " parameters " in listing, listing
            assert "temperature" in listing
    finally:
        sandbox.stop()


IDLE = """
prodsmart: {{url: {url}, timeout: 2s, retry_min: 100ms, retry_max: 1s}}
storage: {{path: {db}, commit_interval: 100ms}}
metrics: {{listen: "127.0.0.1:{metrics}"}}
connections:
  sim:
    simulated: {{seed: 5, poll: 100ms, rate: 20, cycle: 1000s, stopped: 1000s}}
machines:
  M1:
    connection: sim
    counter: {{signal: count, unit: a}}
    running: {{signal: running, unit: a}}
    stop_reason: {{default: Coffee break}}
"""


def test_a_dead_letter_retried_beside_an_idle_agent_is_sent(tmp_path: Path) -> None:
    """The machine stands still (nothing new is committed, nothing wakes the uplink); a dead
    letter the technician retries must still go out, without a restart."""
    sandbox = start_sandbox(SandboxOptions(machines={"M1": ["Stopped"]}))
    config = write_config(tmp_path / "agent.yaml", IDLE.format(
        url=sandbox.url, db=tmp_path / "agent.db", metrics=free_port()))
    try:
        with AgentProcess(config, agent_env(sandbox)):
            wait_until(lambda: "HTTP 400" in _cli("dead-letters", str(config), "list").stdout, 20,
                       message="the stop refused")
            sandbox.set_options(machines={"M1": ["Stopped", "Coffee break"]})
            assert _cli("dead-letters", str(config), "retry").returncode == 0
            wait_until(lambda: sandbox.ledger().runs.get("M1"), 15, message="the retried stop sent")
            assert [r["type"] for r in sandbox.ledger().runs["M1"]] == ["Coffee break"]
    finally:
        sandbox.stop()
