"""Benchmark: what the browser console costs the agent, and how fast /api/status answers with 100 machines.

    python bench/bench_console.py [--machines 100] [--window 20] [--rounds 2]

Runs the real agent (`python -m agent run`) as a process on simulated PLCs against the local
Prodsmart sandbox, alternately with `metrics.console: true` and `false`, and reads the agent's
CPU time (utime + stime) from /proc/<pid>/stat over the same window after a warm-up. Nobody
opens the console meanwhile, so "on" minus "off" is what the console's code paths (the
history recorder) cost when idle. Then, console on, it times /api/status (the overview, and
with ?machine= for one machine page) and measures the CPU of an agent whose console is open
in a browser polling every 1.5 s (the page's own interval).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config.loader import load_config  # noqa: E402
from agent.logic.machine import Logic  # noqa: E402
from agent.runtime.console.history import KEEP_SEGMENTS, SAMPLE_EVERY, History  # noqa: E402
from agent.sandbox import Sandbox, SandboxOptions  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _config(machines: int, folder: Path, port: int, url: str, console: bool) -> Path:
    lines = [f"prodsmart: {{url: {url}, requests_per_minute: 120}}",
             f"storage: {{path: {folder / 'agent.db'}, commit_interval: 200ms}}",
             f"metrics: {{listen: '127.0.0.1:{port}', console: {str(console).lower()}}}",
             "connections:", "  sim: {simulated: {seed: 2, poll: 500ms, rate: 2, cycle: 40s, stopped: 10s}}",
             "machines:"]
    for i in range(machines):
        lines += [f"  M{i}:", "    connection: sim", f"    counter: {{signal: count, unit: u{i}}}",
                  f"    running: {{signal: running, unit: u{i}}}",
                  f"    stop_reason: {{tag: {{signal: reason, unit: u{i}}}, types: {{1: Maintenance}}}}"]
    path = folder / "agent.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


class Agent:
    def __init__(self, machines: int, sandbox: Sandbox, console: bool) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bench-console-"))
        self.port = _free_port()
        config = _config(machines, self.folder, self.port, sandbox.url, console)
        env = dict(os.environ, PRODSMART_API_KEY=sandbox.options.api_key,
                   PRODSMART_API_SECRET=sandbox.options.api_secret, PYTHONPATH=str(ROOT))
        env.pop("PRODSMART_EDGE_CONSOLE_TOKEN", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run", str(config)], cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"http://127.0.0.1:{self.port}/metrics")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the agent did not start") from None
                time.sleep(0.2)

    def cpu_over(self, warmup: float, window: float) -> float:
        time.sleep(warmup)
        before = _cpu(self.proc.pid)
        time.sleep(window)
        return (_cpu(self.proc.pid) - before) / window * 100  # percent of one core

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _sample_cost(machines: int) -> float:
    """Milliseconds of CPU one history sample takes (the recorder's whole work every 2 s), in process."""
    folder = Path(tempfile.mkdtemp(prefix="bench-console-"))
    cfg = load_config(str(_config(machines, folder, 1, "http://127.0.0.1:9", True)))
    logic, history = Logic(cfg.machines), History()
    delivered = {code: 0 for code in cfg.machines}
    n = 2000
    start = time.process_time()
    for i in range(n):
        history.sample(1.8e9 + i * SAMPLE_EVERY, logic.glance(), delivered, i)
    return (time.process_time() - start) / n * 1000


def _full_history_ms(machines: int) -> float:
    """Milliseconds one /api/status spends on average on the last-hour bars when every machine's
    history is full (a stop or start every 5 s for hours: 720 segments each), in process."""
    history = History()
    codes = [f"M{i}" for i in range(machines)]
    for i in range(KEEP_SEGMENTS + 1):
        glance = [(c, 0, i % 2 == 0, None if i % 2 == 0 else "Stop") for c in codes]
        history.sample(1.8e9 + i * 5, glance, {}, 0)
    now = 1.8e9 + KEEP_SEGMENTS * 5
    start = time.process_time()
    for i in range(20):  # one request every 1.5 s, as the page polls: the bars are cached for 10 s
        for h in history.machines.values():
            h.shares(now + i * 1.5)
    return (time.process_time() - start) / 20 * 1000


def _page_ms(port: int, n: int = 20) -> tuple[float, float]:
    """Median milliseconds of one refresh of the open page in headless Chromium (fetch, parse,
    redraw), for the start page and a machine page."""
    from tests.support.browser import open_chromium

    driver, profile = open_chromium()
    out = []
    try:
        for url in (f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/#/m/M0"):
            driver.get(url)
            time.sleep(2.0)
            script = ("const done = arguments[arguments.length - 1], t = performance.now();"
                      "refresh().then(() => done(performance.now() - t));")
            out.append(statistics.median(float(driver.execute_async_script(script)) for _ in range(n)))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return out[0], out[1]


def _latency(port: int, path: str, n: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(n):
        t = time.perf_counter()
        size = len(_get(f"http://127.0.0.1:{port}{path}"))
        times.append((time.perf_counter() - t) * 1000)
        time.sleep(0.05)
    return sorted(times), size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    args = parser.parse_args()
    sample_ms = _sample_cost(args.machines)
    full_ms = _full_history_ms(args.machines)
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(args.rounds):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            sandbox = Sandbox(SandboxOptions()).start()  # a fresh Prodsmart for each fresh agent
            agent = Agent(args.machines, sandbox, mode == "on")
            try:
                cpu[mode].append(agent.cpu_over(args.warmup, args.window))
            finally:
                agent.stop()
                sandbox.stop()
            print(f"round {r + 1}: console {mode:<3} agent CPU {cpu[mode][-1]:.2f}% of a core", flush=True)
    sandbox = Sandbox(SandboxOptions()).start()
    try:
        agent = Agent(args.machines, sandbox, True)
        try:
            time.sleep(args.warmup)
            overview, size = _latency(agent.port, "/api/status", 60)
            page, page_size = _latency(agent.port, "/api/status?machine=M0", 60)
            rendered = _page_ms(agent.port) if args.browser else None
            stop = threading.Event()

            def browser() -> None:  # what the open page does: one request every 1.5 s
                while not stop.wait(1.5):
                    _get(f"http://127.0.0.1:{agent.port}/api/status")

            thread = threading.Thread(target=browser, daemon=True)
            thread.start()
            watched = agent.cpu_over(2.0, args.window)
            stop.set()
            thread.join()
        finally:
            agent.stop()
    finally:
        sandbox.stop()

    def p(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    on, off = statistics.mean(cpu["on"]), statistics.mean(cpu["off"])
    spread = max(cpu["on"] + cpu["off"]) - min(cpu["on"] + cpu["off"])
    print(f"{args.machines} machines, CPU over {args.window:.0f} s windows, {args.rounds} rounds: "
          f"console off {off:.2f}%, console on (nobody watching) {on:.2f}%, difference {on - off:+.2f}% "
          f"(spread of all runs {spread:.2f}%)")
    print(f"/api/status overview: {size / 1024:.0f} KiB, p50 {p(overview, .5):.1f} ms, "
          f"p95 {p(overview, .95):.1f} ms, max {overview[-1]:.1f} ms; "
          f"with one machine's detail: {page_size / 1024:.0f} KiB, "
          f"p50 {p(page, .5):.1f} ms, p95 {p(page, .95):.1f} ms")
    print(f"one history sample of {args.machines} machines: {sample_ms:.3f} ms of CPU every "
          f"{SAMPLE_EVERY:.0f} s = {sample_ms / SAMPLE_EVERY / 10:.4f}% of a core")
    print(f"last-hour bars with every history full ({KEEP_SEGMENTS} segments a machine): "
          f"+{full_ms:.1f} ms a request on average")
    if rendered is not None:
        print(f"one refresh of the open page in Chromium (fetch, parse, redraw): start page "
              f"{rendered[0]:.0f} ms, machine page {rendered[1]:.0f} ms (median of 20)")
    print(f"agent CPU with the console open (polling every 1.5 s): {watched:.2f}% of a core")
    print(f"RESULT machines={args.machines} cpu_off={off:.2f}% cpu_on_idle={on:.2f}% diff={on - off:+.2f}% "
          f"spread={spread:.2f}% status_p50_ms={p(overview, .5):.1f} status_p95_ms={p(overview, .95):.1f} "
          f"cpu_watched={watched:.2f}% sample_ms={sample_ms:.3f} full_history_ms={full_ms:.1f}")


if __name__ == "__main__":
    main()
