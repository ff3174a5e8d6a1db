"""The technician's commands against a real database and a running agent: status, dead letters, rebase."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.sandbox import SandboxOptions
from tests.conftest import free_port
from tests.support.harness import ROOT, AgentProcess, agent_env, start_sandbox, wait_until, write_config

CONFIG = """
prodsmart: {{url: {url}, timeout: 2s, retry_min: 100ms, retry_max: 1s}}
storage: {{path: {db}, commit_interval: 100ms}}
metrics: {{listen: "127.0.0.1:{metrics}"}}
connections:
  sim:
    simulated: {{seed: 5, poll: 100ms, rate: 20, cycle: 3s, stopped: 1s}}
machines:
  M1:
    connection: sim
    counter: {{signal: count, unit: a}}
    running: {{signal: running, unit: a}}
    stop_reason: {{default: Coffee break}}
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_status_dead_letters_and_rebase(tmp_path: Path) -> None:
    sandbox = start_sandbox(SandboxOptions(machines={"M1": ["Stopped"]}))
    config = write_config(tmp_path / "agent.yaml", CONFIG.format(
        url=sandbox.url, db=tmp_path / "agent.db", metrics=free_port()))
    with AgentProcess(config, agent_env(sandbox)) as agent:
        wait_until(lambda: (sandbox.ledger().counters.get("M1") or {}).get("count"), 20, message="counts")
        # "Coffee break" is not a downtime type of M1 in Prodsmart: refused, kept as a dead letter.
        wait_until(lambda: "HTTP 400" in _cli("dead-letters", str(config), "list").stdout, 20,
                   message="a dead letter")
        listing = _cli("dead-letters", str(config), "list").stdout
        assert "startstop" in listing and "Coffee break" in listing and "not assigned" in listing

        status = _cli("status", str(config))
        assert status.returncode == 0, status.stderr
        assert "agent: running" in status.stdout
        assert "connection sim" in status.stdout and "up" in status.stdout
        assert "count" in status.stdout and "dead letters:" in status.stdout
        line = next(x for x in status.stdout.splitlines() if x.startswith("M1 "))
        assert int(line.split()[-2]) >= 1  # dead letters column

        # Prodsmart gets the type; the technician retries: the calls are delivered.
        sandbox.set_options(machines={"M1": ["Stopped", "Coffee break"]})
        retried = _cli("dead-letters", str(config), "retry")
        assert retried.returncode == 0, retried.stderr
        wait_until(lambda: any(r["type"] == "Coffee break" for r in sandbox.ledger().runs.get("M1", [])),
                   20, message="the retried stop in Prodsmart")

        # Rebase: Prodsmart already has 100000 on M1; the next count continues above it.
        rebased = _cli("rebase", str(config), "M1", "100000")
        assert rebased.returncode == 0, rebased.stderr
        wait_until(lambda: sandbox.ledger().counters["M1"]["count"] > 100000, 20, message="rebased count")
        assert agent.running
    stopped = _cli("status", str(config))
    assert "no answer" in stopped.stdout
    assert _cli("rebase", str(config), "NOPE", "1").returncode == 1
    sandbox.stop()


def test_run_with_missing_secret_or_bad_database_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.yaml", CONFIG.format(
        url="http://127.0.0.1:9", db=tmp_path / "agent.db", metrics=free_port()))
    env = agent_env()
    env.pop("PRODSMART_API_KEY")
    env.pop("PRODSMART_API_SECRET")
    missing = subprocess.run([sys.executable, "-m", "agent", "run", str(config)], capture_output=True,
                             text=True, cwd=ROOT, env=env, timeout=60)
    assert missing.returncode == 1
    assert "PRODSMART_API_KEY and PRODSMART_API_SECRET not set" in missing.stderr
    assert "Traceback" not in missing.stderr

    for name, prepare in [
        ("corrupt", lambda p: p.write_bytes(b"this is not a database" * 100)),
        ("missing-folder", lambda p: None),
        ("read-only", lambda p: None),
    ]:
        # /proc takes no new files, even from root (CI runs as root: chmod would not stop it).
        db = {"corrupt": tmp_path / "corrupt.db", "missing-folder": tmp_path / "nope" / "agent.db",
              "read-only": Path("/proc/agent.db")}[name]
        prepare(db)
        bad = write_config(tmp_path / f"{name}.yaml", CONFIG.format(
            url="http://127.0.0.1:9", db=db, metrics=free_port()))
        proc = AgentProcess(bad, agent_env())
        proc.start()
        code = proc.wait(30)
        out = proc.output()
        proc.close()
        assert code == 1, (name, out)
        assert "Traceback" not in out, (name, out)
        assert "Cannot" in out or "cannot" in out, (name, out)
        assert len([x for x in out.splitlines() if x.strip()]) <= 2, (name, out)
        print(name, out)


def test_every_command_has_help_with_an_example() -> None:
    for command in ("run", "check", "status", "probe", "rebase", "dead-letters", "demo"):
        result = _cli(command, "--help")
        assert result.returncode == 0, result.stderr
        assert "example:" in result.stdout and "prodsmart-edge " + command in result.stdout, command


def test_dry_run_prints_calls_and_sends_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.yaml", CONFIG.format(
        url="http://127.0.0.1:9", db=tmp_path / "agent.db", metrics=free_port()))
    env = agent_env()
    env.pop("PRODSMART_API_KEY")  # a dry run needs no credentials
    with AgentProcess(config, env, args=["--dry-run"]) as agent:
        wait_until(lambda: "POST /api/machines/M1/counter" in agent.output(), 20, message="a printed call")
        assert "dry run" in agent.output()
        assert "Cannot deliver" not in agent.output()


def test_json_logs_redact_secrets(tmp_path: Path) -> None:
    import io
    import json
    import logging

    from agent.runtime.logsetup import setup_logging

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("json", "INFO", ["s3cr3t-key"], stream=stream)
    logging.getLogger("agent.test").warning("calling https://x/api?access_token=abc123&y=1 with %s",
                                            "s3cr3t-key")
    entry = json.loads(stream.getvalue().splitlines()[-1])
    assert entry["level"] == "warning" and entry["logger"] == "agent.test"
    assert "abc123" not in entry["message"] and "s3cr3t-key" not in entry["message"]
    assert "access_token=***" in entry["message"]
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
