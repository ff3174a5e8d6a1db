"""Benchmark: how fast the command line answers, and what an agent process loads.

    python bench/bench_cli.py [--runs 5]

Times `prodsmart-edge --help` and `prodsmart-edge check config/agent.example.yaml` as a
technician runs them (a fresh interpreter each time; wall clock, median of --runs), and lists
which protocol libraries the start-up of `run` imports for an MQTT-only configuration.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "agent.example.yaml"
HEAVY = ("asyncua", "pymodbus", "paho", "serial", "cryptography", "httpx", "aiosqlite")

# What `run` imports for a configuration: the CLI modules, the service and every source the
# configuration names, then sys.modules is read (no connection is made).
PROBE = f"""
import sys
from agent.cli.common import load
import agent.cli.run  # the run command and everything it wires
cfg = load(sys.argv[1])
from agent.sources.registry import PROTOCOLS
for conn in cfg.connections.values():
    PROTOCOLS[conn.protocol].load_source()
print(" ".join(sorted(m for m in {{n.split('.')[0] for n in sys.modules}} if m in {HEAVY!r})))
"""


def wall(args: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loaded(config: Path) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, str(config)], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip() or "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    help_s = wall(["--help"], args.runs)
    check_s = wall(["check", str(EXAMPLE)], args.runs)
    print(f"prodsmart-edge --help          median of {args.runs}: {help_s:.3f} s")
    print(f"prodsmart-edge check (example) median of {args.runs}: {check_s:.3f} s")
    mqtt_only = ROOT / "tests" / "cli" / "mqtt-only.yaml"
    libs = loaded(mqtt_only)
    print(f"run, MQTT-only config, loads: {libs}")
    asyncua = "asyncua" in libs.split()
    print(f"RESULT help_s={help_s:.3f} check_s={check_s:.3f} mqtt_only_loads_asyncua={asyncua}")


if __name__ == "__main__":
    main()
