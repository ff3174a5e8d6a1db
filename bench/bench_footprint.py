"""Benchmark: the agent's CPU and memory against a bare forwarder, on 30 machines.

    python bench/bench_footprint.py [--window 60] [--warmup 15] [--rounds 2]

The plant, each part in its own process: 10 Modbus TCP PLCs (one server, units 1-10) polled at
10 Hz, 10 OPC UA PLCs (one server, one session and subscription each) sampled at 100 ms and 10
MQTT publishers (10 msg/s, QoS 1, through a real Mosquitto); 3 values per machine
(bench/footprint_plant.py). The agent (`python -m agent run`, against the Prodsmart sandbox in
its own process) and a bare forwarder (bench/footprint_forwarder.py: the same libraries, no
logic, no outbox, one batched POST a second to a trivial HTTP sink) run alternately, A B A B, in
windows of `--window` seconds after `--warmup` seconds; each process tree's CPU (utime+stime) and
RSS (VmRSS, mean of 1 s samples) are read from /proc. Alternating windows matter: the machine is
shared and its load changes; compare agent and forwarder from neighbouring windows.

Every reading handled: the counters run from 0 only after the agent's first readings of every
connection (so its baseline is 0), keep running while the forwarder has the stage (the agent
counts that on its next start), and are frozen at the end; the agent then runs once more until
the sandbox holds, for all 30 machines, exactly the count each simulated PLC or publisher produced.
Also printed: readings/s each side took in (the agent's readings_total; the forwarder's rows).

Last line: RESULT cpu_ratio=<agent/forwarder> rss_ratio=<agent/forwarder> agent_cpu=<%> agent_rss_mb=<MB>
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402
from tests.support.fixtures_mqtt import Mosquitto  # noqa: E402

MACHINES = 10
TICKS = os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _cpu_rss(root: int) -> tuple[float, float]:
    """CPU seconds and RSS MB of a process and its descendants."""
    cpu, rss = 0.0, 0.0
    for pid in _tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / TICKS
        m = re.search(r"VmRSS:\s+(\d+) kB", status)
        rss += int(m.group(1)) / 1024 if m else 0.0
    return cpu, rss


def measure(pid: int, seconds: float) -> tuple[float, float]:
    """(CPU % of one core, mean RSS MB) of the process tree over `seconds`."""
    cpu0, _ = _cpu_rss(pid)
    t0 = time.monotonic()
    samples = []
    while time.monotonic() - t0 < seconds:
        time.sleep(1.0)
        samples.append(_cpu_rss(pid)[1])
    cpu1, _ = _cpu_rss(pid)
    return (cpu1 - cpu0) / (time.monotonic() - t0) * 100, sum(samples) / len(samples)


class Sink(BaseHTTPRequestHandler):
    rows = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Sink.rows += len(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class Part:
    """A plant process speaking the footprint_plant stdin protocol."""

    def __init__(self, kind: str, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "footprint_plant.py"), kind, "--port", str(port),
             "--machines", str(MACHINES)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self._line()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError("a plant process died")
        return line

    def ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._line()

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def agent_config(tmp: Path, sandbox: str, metrics: int, mb: int, ua: tuple[int, int], mq: int) -> str:
    lines = [f"prodsmart: {{url: {sandbox}}}", f"storage: {{path: {tmp}/agent.db}}",
             f"metrics: {{listen: 127.0.0.1:{metrics}}}", "logging: {level: WARNING}", "connections:",
             f"  broker: {{mqtt: {{host: 127.0.0.1, port: {mq}, client_id: bench-agent}}}}"]
    for i in range(1, MACHINES + 1):
        lines += [f"  plc-mb{i}: {{modbus: {{host: 127.0.0.1, port: {mb}, unit: {i}, poll: 100ms}}}}",
                  f"  plc-ua{i}: {{opcua: {{url: 'opc.tcp://127.0.0.1:{ua[0]}/bench', sampling: 100ms}}}}"]
    lines.append("machines:")
    node = f"ns={ua[1]};s=M{{i}}.{{v}}"
    for i in range(1, MACHINES + 1):
        t = f"bench/m{i}"
        lines += [
            f"  MB{i}: {{connection: plc-mb{i}, counter: {{holding: 0, type: uint32}}, "
            f"running: {{holding: 2}}, parameters: {{temp: {{holding: 3, scale: 0.1, deadband: 0.5}}}}}}",
            f"  UA{i}: {{connection: plc-ua{i}, counter: {{node: '{node.format(i=i, v='Counter')}', "
            f"type: uint32}}, running: {{node: '{node.format(i=i, v='Running')}'}}, "
            f"parameters: {{temp: {{node: '{node.format(i=i, v='Temperature')}', deadband: 0.5}}}}}}",
            f"  MQ{i}: {{connection: broker, counter: {{topic: {t}, json: count, type: uint32}}, "
            f"running: {{topic: {t}, json: running}}, "
            f"parameters: {{temp: {{topic: {t}, json: temp, deadband: 0.5}}}}}}",
        ]
    return "\n".join(lines) + "\n"


def readings_total(metrics: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^prodsmart_edge_readings_total\{connection="([^"]+)"\} (\S+)', text, re.M)}


def ledger(sandbox: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{sandbox}/_sandbox/ledger", timeout=10) as r:
        return dict(json.loads(r.read()))


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Bench:
    """The plant, the sandbox, the sink and the two contenders."""

    def __init__(self, tmp: Path, python: str = sys.executable) -> None:
        self.tmp = tmp
        self.python = python
        self.broker = Mosquitto(tmp / "mosquitto").start()
        self.parts = {kind: Part(kind, port) for kind, port in
                      (("modbus", free_port()), ("opcua", free_port()), ("mqtt", self.broker.port))}
        self.sandbox = subprocess.Popen([sys.executable, "-m", "agent.sandbox"], cwd=ROOT,
                                        stdout=subprocess.PIPE, text=True)
        assert self.sandbox.stdout is not None
        self.sandbox_url = self.sandbox.stdout.readline().strip().split("=", 1)[1]
        self.sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
        threading.Thread(target=self.sink.serve_forever, daemon=True).start()
        self.metrics = free_port()
        ua_port, ns = self.parts["opcua"].port, int(self.parts["opcua"].ready.split()[1])
        self.config = tmp / "agent.yaml"
        self.config.write_text(agent_config(tmp, self.sandbox_url, self.metrics, self.parts["modbus"].port,
                                            (ua_port, ns), self.broker.port))
        self.plan = tmp / "forwarder.json"
        self.plan.write_text(json.dumps({
            "sink": f"http://127.0.0.1:{self.sink.server_address[1]}/", "poll": 0.1, "sampling": 0.1,
            "modbus": [["127.0.0.1", self.parts["modbus"].port, i] for i in range(1, MACHINES + 1)],
            "opcua": [[f"opc.tcp://127.0.0.1:{ua_port}/bench",
                       [f"ns={ns};s=M{i}.{v}" for v in ("Counter", "Running", "Temperature")]]
                      for i in range(1, MACHINES + 1)],
            "mqtt": ["127.0.0.1", self.broker.port, [f"bench/m{i}" for i in range(1, MACHINES + 1)]]}))

    def start_agent(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PRODSMART_API_KEY": "sandbox-key", "PRODSMART_API_SECRET": "sandbox-secret",
               "PYTHONPATH": str(ROOT)}
        return subprocess.Popen([self.python, "-m", "agent", "run", str(self.config)], cwd=ROOT, env=env,
                                stdout=open(self.tmp / "agent.log", "ab"), stderr=subprocess.STDOUT)

    def start_forwarder(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([self.python, str(ROOT / "bench" / "footprint_forwarder.py"),
                                 str(self.plan)], cwd=ROOT)

    def all_read(self) -> bool:
        """The agent has readings of every connection (21)."""
        return len([v for v in readings_total(self.metrics).values() if v > 0]) == 2 * MACHINES + 1

    def window(self, who: str, seconds: float, warmup: float) -> tuple[float, float, float]:
        proc = self.start_agent() if who == "agent" else self.start_forwarder()
        try:
            if who == "agent":
                wait_for(self.all_read, 60, "the agent's first readings")
                for part in self.parts.values():  # counters start from the agent's baseline of 0
                    part.ask("go")
            time.sleep(warmup)
            before = self._taken(who)
            cpu, rss = measure(proc.pid, seconds)
            rate = (self._taken(who) - before) / seconds
        finally:
            stop(proc)
        print(f"{who:>9}: cpu {cpu:5.1f} %  rss {rss:5.1f} MB  readings/s {rate:6.0f}", flush=True)
        return cpu, rss, rate

    def _taken(self, who: str) -> float:
        return sum(readings_total(self.metrics).values()) if who == "agent" else float(Sink.rows)

    def settle(self) -> bool:
        """Freeze the counters; run the agent until the sandbox holds every machine's final count."""
        expected: dict[str, int] = {}
        for prefix, kind in (("MB", "modbus"), ("UA", "opcua"), ("MQ", "mqtt")):
            counts = json.loads(self.parts[kind].ask("freeze").split(" ", 1)[1])
            expected.update({prefix + k[1:]: v for k, v in counts.items()})
        proc = self.start_agent()
        got: dict[str, Any] = {}

        def done() -> bool:
            nonlocal got
            got = {m: c.get("count") for m, c in ledger(self.sandbox_url)["counters"].items()}
            return got == expected

        try:
            wait_for(done, 180, "the sandbox to hold every final count")
            ok = True
        except RuntimeError:
            ok = False
        finally:
            stop(proc)
        led = ledger(self.sandbox_url)
        wrong = {m: (got.get(m), n) for m, n in expected.items() if got.get(m) != n}
        print(f"counts: {sum(expected.values())} parts produced on {len(expected)} machines, "
              f"{sum(v or 0 for v in got.values())} in the sandbox; machines wrong (sandbox, plant): "
              f"{wrong or 'none'}; calls accepted {len(led['accepted'])}, rejected {len(led['rejected'])}")
        return ok and not led["rejected"]

    def close(self) -> None:
        for part in self.parts.values():
            part.stop()
        self.sandbox.send_signal(signal.SIGTERM)
        self.sandbox.wait(10)
        self.sink.shutdown()
        self.broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured per window")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before each window")
    parser.add_argument("--rounds", type=int, default=2, help="A B pairs")
    parser.add_argument("--python", default=sys.executable,
                        help="the Python (venv) the agent and the forwarder run with; default: this one. "
                             "A venv with the agent alone (`pip install .`) is what a line PC runs: the test "
                             "extras make httpx import its command line (click, rich, pygments) in both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        bench = Bench(Path(tmp), args.python)
        try:
            runs: dict[str, list[tuple[float, float, float]]] = {"agent": [], "forwarder": []}
            for _ in range(args.rounds):
                for who in ("agent", "forwarder"):
                    runs[who].append(bench.window(who, args.window, args.warmup))
            handled = bench.settle()
        finally:
            bench.close()
    a, f = ([sum(r[i] for r in runs[w]) / len(runs[w]) for i in range(3)] for w in ("agent", "forwarder"))
    print(f"mean: agent cpu {a[0]:.1f} % rss {a[1]:.1f} MB ({a[2]:.0f} readings/s); "
          f"forwarder cpu {f[0]:.1f} % rss {f[1]:.1f} MB ({f[2]:.0f} readings/s)")
    print(f"every count handled: {'yes' if handled else 'NO'}")
    print(f"RESULT cpu_ratio={a[0] / f[0]:.2f} rss_ratio={a[1] / f[1]:.2f} agent_cpu={a[0]:.1f} "
          f"agent_rss_mb={a[1]:.1f}")


if __name__ == "__main__":
    main()
