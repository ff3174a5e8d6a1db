"""`prodsmart-edge status` reads the agent's /api/status, with the console token beyond loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port
from tests.support.harness import ROOT, AgentProcess, agent_env, start_sandbox, wait_until, write_config

CONFIG = """
prodsmart: {{url: {url}, timeout: 2s}}
storage: {{path: {db}, commit_interval: 100ms}}
metrics: {{listen: "0.0.0.0:{metrics}"}}
connections:
  sim:
    simulated: {{seed: 5, poll: 100ms, rate: 20}}
machines:
  M1:
    connection: sim
    counter: {{signal: count, unit: a}}
"""
TOKEN = "status-cli-console-token-42"


def _status(config: Path, token: str | None) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PRODSMART_EDGE_CONSOLE_TOKEN", None)
    if token:
        env["PRODSMART_EDGE_CONSOLE_TOKEN"] = token
    result = subprocess.run([sys.executable, "-m", "agent", "status", str(config)], capture_output=True,
                            text=True, cwd=ROOT, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_status_shows_the_live_tags_of_an_agent_that_needs_the_console_token(tmp_path: Path) -> None:
    sandbox = start_sandbox()
    config = write_config(tmp_path / "agent.yaml", CONFIG.format(
        url=sandbox.url, db=tmp_path / "agent.db", metrics=free_port()))
    try:
        with AgentProcess(config, agent_env(sandbox, {"PRODSMART_EDGE_CONSOLE_TOKEN": TOKEN})):
            def live() -> str | None:
                out = _status(config, TOKEN)
                return out if "good" in out else None

            out = wait_until(live, 30, message="status with the live counter reading")
            assert "agent: running" in out and "connection sim" in out
            counter = next(line for line in out.splitlines() if line.strip().startswith("counter"))
            assert "good" in counter and "ago" in counter
            # Without the token (or with a wrong one) the console JSON is refused: status falls
            # back to the plain /status, which needs no token, and still shows the live tags.
            for token in (None, TOKEN + "x"):
                out = _status(config, token)
                assert "agent: running" in out and "connection sim" in out
                counter = next(line for line in out.splitlines() if line.strip().startswith("counter"))
                assert "good" in counter and "ago" in counter
    finally:
        sandbox.stop()
