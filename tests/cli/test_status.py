"""`status` and /status beside a running agent: each machine's lag and the request budget, shared or not."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from tests.cli.test_main import _cli
from tests.conftest import free_port
from tests.support.fixtures_redis import RedisServer, redis_server
from tests.support.harness import AgentProcess, agent_env, start_sandbox, wait_until, write_config

__all__ = ["redis_server"]  # the fixture

CONFIG = """
prodsmart:
  url: {url}
  requests_per_minute: 6        # 3 busy machines: each waits ~30 s for its turn
  timeout: 2s
  budget: {{redis: "{redis}", company: acme}}
storage: {{path: {db}, commit_interval: 100ms}}
metrics: {{listen: "127.0.0.1:{metrics}"}}
connections:
  sim:
    simulated: {{seed: 5, poll: 100ms, rate: 20, cycle: 600s, stopped: 0s}}
machines:
  M1: {{connection: sim, counter: {{signal: count, unit: a}}}}
  M2: {{connection: sim, counter: {{signal: count, unit: b}}}}
  M3: {{connection: sim, counter: {{signal: count, unit: c}}}}
"""


def _status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data
    except OSError:
        return None


def test_status_shows_lag_and_the_shared_budget(tmp_path: Path, redis_server: RedisServer) -> None:
    sandbox = start_sandbox()
    port = free_port()
    config = write_config(tmp_path / "agent.yaml", CONFIG.format(
        url=sandbox.url, redis=redis_server.url, db=tmp_path / "agent.db", metrics=port))
    try:
        with AgentProcess(config, agent_env(sandbox)):
            doc = wait_until(lambda: (s := _status(port)) and max(s["lag"].values()) >= 3 and s, 30,
                             message="a machine waiting its turn")
            assert set(doc["lag"]) == {"M1", "M2", "M3"}
            budget = doc["budget"]
            assert budget["mode"] == "shared" and budget["agents"] == 1 and budget["company"] == "acme"
            assert budget["requests_per_minute"] == 6
            out = _cli("status", str(config)).stdout
            where = f"redis://127.0.0.1:{redis_server.port}"
            assert f"budget: shared through Redis at {where}: company acme" in out
            header = next(line for line in out.splitlines() if line.startswith("machine"))
            assert header.split()[:4] == ["machine", "queued", "oldest", "lag"]
            lags = [line.split()[3] for line in out.splitlines() if line.startswith("M")]
            assert len(lags) == 3 and any(lag.endswith("s") and int(lag[:-1]) >= 3 for lag in lags)

            redis_server.kill()
            wait_until(lambda: (s := _status(port)) and s["budget"]["mode"] == "fallback", 15,
                       message="the fallback share")
            out = _cli("status", str(config)).stdout
            assert "FALLBACK: Redis at redis://127.0.0.1" in out and "this agent's share is 6 requests" in out
    finally:
        sandbox.stop()
