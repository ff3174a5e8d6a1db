"""Benchmark: count freshness under the company's request budget, one agent or three sharing it.

    python bench/bench_budget.py [--machines 100 300 1000] [--agents 1 3] [--bound 30] [--unshared]

Every simulated machine makes one part per tick, all the time, so every machine is always
backlogged: with N machines and a budget of R requests a minute no scheduler keeps every
machine's lag (the age of its oldest part Prodsmart does not have yet) under N/R minutes. Time
is compressed by scaling the limits: the sandbox (its own process) allows 120*k requests a
minute with 20*k taken by "other integrations", the agents (each its own process, with its own
SQLite outbox and API key) share R = 96*k through a real redis-server (one agent: its own token
bucket), k chosen so that N/R is about `--bound` seconds. Compression scales every time constant
of the budget: the burst too (2*k), so a hiccup of the PC that the real bucket absorbs (1.2 s)
is absorbed compressed as well.

Lag at delivery is measured outside the agents: for each counter call the sandbox accepted,
the time it arrived minus the time the oldest part it brought was made (parts are made on a
fixed schedule). Per case: calls a minute used, 429s, lag p50/p99/max, the bound N/R. Last line:
RESULT lag_p99_ratio=<worst p99 / bound> utilisation=<worst used / budget> rejects_429=<total>.
`--unshared` adds, for comparison and outside RESULT, three agents that each believe they own
the budget (what agents did before the shared budget).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config.sections import BudgetSection, ProdsmartSection  # noqa: E402
from agent.core.metrics import Metrics  # noqa: E402
from agent.core.model import CounterChanged  # noqa: E402
from agent.outbox.store import Outbox  # noqa: E402
from agent.uplink.budget import Budget, LocalBudget  # noqa: E402
from agent.uplink.client import Credentials, Uplink  # noqa: E402
from agent.uplink.shared import RedisAccess, SharedBudget  # noqa: E402

COMPANY_LIMIT, OTHERS, BUDGET = 120, 20, 96  # a minute, before compression
TICK = 0.5  # seconds between parts of every machine
MAX_SCALE = 20.0  # above ~2000 calls a minute the bench measures the PC, not the scheduler


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- one agent (worker)


async def _worker(spec: dict[str, Any]) -> None:
    """One agent: its machines make a part every TICK from `start`; the uplink sends until `end`."""
    settings = ProdsmartSection(url=spec["url"], retry_min=0.2, retry_max=2.0, timeout=5).model_copy(
        update={"requests_per_minute": spec["budget"]})
    metrics = Metrics()
    budget: Budget
    if spec["redis"]:
        cfg = BudgetSection(redis=spec["redis"], company=spec["company"])
        budget = SharedBudget(spec["budget"], RedisAccess(cfg), spec["name"], metrics, burst=spec["burst"])
    else:
        budget = LocalBudget(spec["budget"], metrics, burst=spec["burst"])
    box = await Outbox.open(spec["db"], metrics=metrics)
    uplink = Uplink(box, settings, Credentials(spec["key"], spec["secret"]), metrics, budget=budget)
    machines = spec["machines"]
    sender = asyncio.create_task(uplink.run())
    start, end = spec["start"], spec["end"]
    tick = 1
    try:
        while time.time() < end:
            due = start + tick * TICK
            await asyncio.sleep(max(0.0, due - time.time()))
            await box.commit({}, [CounterChanged(m, tick) for m in machines], now=due)
            uplink.wake()
            tick += 1
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await budget.close()
        await box.close()


# ---------------------------------------------------------------------------- one case


def _start_sandbox(folder: Path, scale: float, clients: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    options = {"requests_per_minute": int(COMPANY_LIMIT * scale), "clients": clients,
               "other_integrations_per_minute": OTHERS * scale}
    path = folder / "sandbox.json"
    path.write_text(json.dumps(options))
    proc = subprocess.Popen([sys.executable, "-m", "agent.sandbox", "--options", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("SANDBOX_URL="):
        raise RuntimeError(f"the sandbox did not start: {line!r}")
    return proc, line.split("=", 1)[1]


def _start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    return proc, f"redis://127.0.0.1:{port}/0"


def _lags(ledger: dict[str, Any], start: float, measure_from: float, measure_to: float) -> list[float]:
    """Lag at delivery of every counter call accepted in the window."""
    last: dict[str, int] = {}
    lags: list[float] = []
    for entry in ledger["accepted"]:
        if entry["endpoint"] != "counter":
            continue
        machine, count = entry["machine"], int(entry["body"]["count"])
        previous = last.get(machine)
        last[machine] = count
        if previous is not None and measure_from <= entry["time"] <= measure_to:
            made = start + (previous + 1) * TICK  # the oldest part this call brought
            lags.append(entry["time"] - made)
    return lags


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else math.nan


def run_case(machines: int, agents: int, bound_target: float, shared: bool = True) -> dict[str, float]:
    scale = min(MAX_SCALE, machines / (BUDGET * bound_target / 60))
    budget = BUDGET * scale
    bound = machines / budget * 60  # seconds
    warmup, measure = 1.5 * bound + 5, 2.5 * bound
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        keys = {f"agent-{i}": f"secret-{i}" for i in range(agents)}
        sandbox, url = _start_sandbox(folder, scale, keys)
        redis, redis_url = _start_redis(folder) if agents > 1 and shared else (None, "")
        start = time.time() + 2.0
        end = start + warmup + measure
        workers = []
        try:
            for i, (key, secret) in enumerate(keys.items()):
                spec = {"url": url, "budget": budget, "redis": redis_url, "company": f"bench-{machines}",
                        "name": key, "key": key, "secret": secret, "burst": max(2, round(2 * scale)),
                        "db": str(folder / f"{key}.db"),
                        "machines": [f"M{m}" for m in range(i, machines, agents)], "start": start, "end": end}
                workers.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                                                cwd=ROOT))
            for w in workers:
                w.wait(timeout=end - time.time() + 60)
            with urllib.request.urlopen(f"{url}/_sandbox/ledger", timeout=30) as response:
                ledger = json.loads(response.read())
        finally:
            for proc in [*workers, sandbox, *([redis] if redis else [])]:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(10)
    lags = _lags(ledger, start, start + warmup, end)
    window = [e for e in ledger["accepted"] if start + warmup <= e["time"] <= end]
    used = len(window) / measure * 60
    return {"machines": machines, "agents": agents, "scale": scale, "budget": budget, "bound": bound,
            "used": used, "utilisation": used / budget, "rejects_429": ledger["statuses"].get("429", 0),
            "p50": _pct(lags, 0.5), "p99": _pct(lags, 0.99), "max": max(lags, default=math.nan),
            "calls": len(lags), "others_refused": ledger["other_integrations"]["refused"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machines", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--bound", type=float, default=30.0, help="target N/R in seconds (time compression)")
    parser.add_argument("--unshared", action="store_true", help="also 3 agents without a shared budget")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        logging.getLogger().addHandler(logging.NullHandler())  # 429 warnings: counted in the summary
        asyncio.run(_worker(json.loads(args.worker)))
        return 0
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    results = []
    for machines in args.machines:
        for agents in args.agents:
            r = run_case(machines, agents, args.bound)
            results.append(r)
            print(f"machines={machines:<5} agents={agents} time x{r['scale']:.1f}: "
                  f"budget {r['budget']:.0f}/min ({BUDGET}/min real), "
                  f"used {r['used']:.0f}/min ({r['utilisation']:.3f}), 429s {r['rejects_429']}, "
                  f"lag p50 {r['p50']:.2f}s p99 {r['p99']:.2f}s max {r['max']:.2f}s, "
                  f"bound N/R {r['bound']:.2f}s (= {machines / BUDGET:.2f} real minutes), "
                  f"p99/bound {r['p99'] / r['bound']:.3f}, {r['calls']} calls measured", flush=True)
    for machines in args.machines if args.unshared else []:
        r = run_case(machines, 3, args.bound, shared=False)
        print(f"machines={machines:<5} agents=3 NOT SHARED (each {r['budget']:.0f}/min): "
              f"used {r['used']:.0f}/min, 429s {r['rejects_429']}, lag p50 {r['p50']:.2f}s "
              f"p99 {r['p99']:.2f}s max {r['max']:.2f}s, bound N/R {r['bound']:.2f}s (not in RESULT)",
              flush=True)
    ratio = max(r["p99"] / r["bound"] for r in results)
    utilisation = min(r["utilisation"] for r in results)
    rejects = sum(int(r["rejects_429"]) for r in results)
    print(f"RESULT lag_p99_ratio={ratio:.3f} utilisation={utilisation:.3f} rejects_429={rejects}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
