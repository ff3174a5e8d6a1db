"""End to end: three agents of one company share its 120 requests a minute through a real Redis.

Three `prodsmart-edge run` processes, each with its own API key, database and simulated PLC,
against one sandbox that allows 120 requests a minute for the whole company, 20 of which its
other integrations take. The agents share 96 a minute through redis-server: no 429, the budget
used; Redis is killed for 30 s: each agent falls back to a third and the company stays under its
limit; Redis comes back: shared again. Every machine's count in the sandbox is exact.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from agent.config.loader import load_config
from agent.sandbox import SandboxOptions
from agent.sources.simulated.config import SimulatedConnection
from agent.sources.simulated.source import SimulatedPlc
from tests.conftest import free_port
from tests.support.fixtures_redis import RedisServer, redis_server
from tests.support.harness import AgentProcess, agent_env, start_sandbox, wait_until, write_config

__all__ = ["redis_server"]  # the fixture

BUDGET = 96
CONFIG = """
prodsmart:
  url: {url}
  requests_per_minute: {budget}
  timeout: 2s
  retry_min: 100ms
  retry_max: 1s
  budget:
    redis: {redis}
    company: acme
storage:
  path: {db}
  commit_interval: 100ms
metrics:
  listen: 127.0.0.1:{metrics_port}
connections:
  sim:
    simulated: {{seed: {seed}, poll: 100ms, rate: 10, cycle: 20s, stopped: 4s, scrap_every: 7,
                start_at: {start}, stop_at: {stop}}}
machines:
{machines}
"""
MACHINE = """  {code}:
    connection: sim
    counter: {{signal: count, unit: {unit}}}
    waste:
      Scrap: {{signal: scrap, unit: {unit}}}
    running: {{signal: running, unit: {unit}}}
"""


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("prodsmart_edge_" + name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def _most_in_a_minute(times: list[float]) -> int:
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t - first < 60.0) for i, first in enumerate(times)), default=0)


@pytest.mark.timeout(360)
def test_three_agents_share_the_company_budget_and_survive_redis_going_away(
        tmp_path: Path, redis_server: RedisServer) -> None:
    keys = {f"line-{i}-key": f"line-{i}-secret" for i in (1, 2, 3)}
    sandbox = start_sandbox(SandboxOptions(requests_per_minute=120, other_integrations_per_minute=20,
                                           api_key="line-1-key", api_secret="line-1-secret", clients=keys))
    t0 = time.time()
    start, kill_at = t0 + 10.0, t0 + 85.0
    back_at, stop = kill_at + 30.0, kill_at + 55.0
    agents: list[AgentProcess] = []
    ports: list[int] = []
    configs: list[Path] = []
    try:
        for i, (key, secret) in enumerate(keys.items(), 1):
            ports.append(free_port())
            machines = "".join(MACHINE.format(code=f"L{i}-M{u}", unit=f"u{i}{u}") for u in range(3))
            configs.append(write_config(tmp_path / f"agent-{i}.yaml", CONFIG.format(
                url=sandbox.url, budget=BUDGET, redis=redis_server.url, db=tmp_path / f"agent-{i}.db",
                metrics_port=ports[-1], seed=i, start=start, stop=stop, machines=machines)))
            env = agent_env(sandbox, {"PRODSMART_API_KEY": key, "PRODSMART_API_SECRET": secret})
            agents.append(AgentProcess(configs[-1], env).start())
        try:
            wait_until(lambda: all(_metric(p, "budget_shared") == 1 for p in ports), 20,
                       message="every agent on the shared budget")
        except AssertionError:
            raise AssertionError(agents[0].output()[-3000:]) from None
        assert time.time() < start, "the agents took too long to start"

        _sleep_until(kill_at)
        redis_server.kill()
        wait_until(lambda: all(_metric(p, "budget_shared") == 0 for p in ports), 10,
                   message="every agent on its fallback share")
        assert all(_metric(p, "budget_requests_per_minute") == BUDGET / 3 for p in ports)
        _sleep_until(back_at)
        redis_server.start()
        wait_until(lambda: all(_metric(p, "budget_shared") == 1 for p in ports), 15,
                   message="every agent back on the shared budget")
        assert all(_metric(p, "budget_fallbacks_total") == 1 for p in ports)
        _sleep_until(stop + 0.5)

        expected: dict[str, tuple[int, int]] = {}
        for i, config in enumerate(configs, 1):
            cfg = load_config(config).connections["sim"].config
            assert isinstance(cfg, SimulatedConnection)
            for u in range(3):
                plc = SimulatedPlc(cfg, f"u{i}{u}")
                expected[f"L{i}-M{u}"] = (plc.produced(stop), plc.scrap(stop))
        assert all(count > 300 for count, _ in expected.values())

        def settled() -> bool:
            counters = sandbox.ledger().counters
            return all(counters.get(m, {}).get("count") == c
                       and counters[m].get("waste", {}).get("Scrap") == s for m, (c, s) in expected.items())

        wait_until(settled, 60, message=f"the sandbox's counts to reach {expected}")
        ledger = sandbox.ledger()
        assert ledger.statuses.get("429", 0) == 0, [r for r in ledger.rejected if r["status"] == 429][:3]
        assert ledger.other_integrations["refused"] == 0  # the agents left the others their 20
        for machine, (count, scrap) in expected.items():
            assert ledger.counters[machine] == {"count": count, "waste": {"Scrap": scrap}}
        sent = [e for e in ledger.accepted]
        assert _most_in_a_minute([e["time"] for e in sent]) <= BUDGET + 2
        # Shared, backlogged: the three together use the budget, each a fair part of it.
        steady = [e for e in sent if start + 10 <= e["time"] < kill_at]
        minutes = (kill_at - start - 10) / 60
        assert len(steady) >= 0.9 * BUDGET * minutes
        for key in keys:
            assert len([e for e in steady if e["client"] == key]) >= 0.25 * BUDGET * minutes
        # Redis away: each agent keeps to its third (after the one request it may have had in hand).
        outage = [e for e in sent if kill_at + 2 <= e["time"] < back_at]
        for key in keys:
            mine = [e for e in outage if e["client"] == key]
            assert len(mine) <= BUDGET / 3 * (back_at - kill_at - 2) / 60 + 2
        for agent in agents:
            assert agent.terminate() == 0
            log = agent.output()
            assert log.count("Cannot reach Redis") == 1, log[-3000:]
            assert log.count("shared again") == 1, log[-3000:]
            assert "Traceback" not in log
    finally:
        for agent in agents:
            agent.close()
        sandbox.stop()
