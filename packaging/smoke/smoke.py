"""Smoke test of an installed prodsmart-edge (the image's smoke stage): every step must pass, or exit 1.

As the image's non-root user, with a config it cannot write: `check`, then the agent against the
Prodsmart sandbox for ~15 s (it must deliver calls the sandbox accepts), /healthz answering 200,
and SIGTERM ending the agent with exit code 0. Uses only the standard library and the installed agent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NoReturn

RUN_FOR = 15.0


def step(text: str) -> None:
    print(f"smoke: {text}", flush=True)


def fail(text: str, *logs: Path) -> NoReturn:
    print(f"smoke: FAILED: {text}", file=sys.stderr, flush=True)
    for log in logs:
        if log.exists():
            print(f"--- {log}\n{log.read_text(errors='replace')[-4000:]}", file=sys.stderr, flush=True)
    sys.exit(1)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def setting(config: Path, section: str, key: str) -> str:
    """A `key:` value of a top-level section (the smoke config is simple and known)."""
    inside = False
    for line in config.read_text().splitlines():
        if not line.startswith(" "):
            inside = line.rstrip() == f"{section}:"
        elif inside and line.strip().startswith(f"{key}:"):
            return line.split(":", 1)[1].strip()
    raise SystemExit(f"smoke: {config} has no {section}.{key}")


def wait_for(what: str, check: Any, timeout: float, *logs: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    fail(f"timed out after {timeout:.0f} s waiting for {what}", *logs)


def healthcheck(metrics: str, log: Path) -> None:
    """The image's own HEALTHCHECK command (image.sh saved it beside this file), pointed at this
    config's metrics address instead of the default 127.0.0.1:9108."""
    saved = Path(__file__).with_name("healthcheck.json")
    if not saved.exists():
        return
    test = json.loads(saved.read_text())["Test"]
    if test[0] == "CMD-SHELL":
        argv = ["/bin/sh", "-c", test[1]]
    elif test[0] == "CMD":
        argv = test[1:]
    else:
        fail(f"the HEALTHCHECK is {test!r}")
    argv = [a.replace("127.0.0.1:9108", metrics) for a in argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        fail(f"the image's HEALTHCHECK exited {done.returncode}: {done.stdout}{done.stderr}", log)
    step("the image's HEALTHCHECK command passed")


def main() -> None:
    config = Path(sys.argv[1])
    if os.getuid() == 0:
        fail("running as root: the image must set a non-root USER")
    step(f"running as uid {os.getuid()}, gid {os.getgid()}")
    if os.access(config, os.W_OK) or os.access(config.parent, os.W_OK):
        fail(f"{config} is writable by the agent's user: it must be read-only")
    step(f"{config} is read-only for this user")

    result = subprocess.run(["prodsmart-edge", "check", str(config)], capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"check exited {result.returncode}: {result.stdout}{result.stderr}")
    step(result.stdout.strip())

    sandbox_url = setting(config, "prodsmart", "url")
    metrics = setting(config, "metrics", "listen")
    port = sandbox_url.rsplit(":", 1)[1]
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"smoke-{os.getpid()}"
    work.mkdir()
    sandbox_log, agent_log = work / "sandbox.log", work / "agent.log"
    with sandbox_log.open("wb") as out:
        sandbox = subprocess.Popen([sys.executable, "-m", "agent.sandbox", "--port", port],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for("the sandbox", lambda: get(f"{sandbox_url}/_sandbox/options")[0] == 200, 20, sandbox_log)
        options = json.loads(get(f"{sandbox_url}/_sandbox/options")[1])
        env = {**os.environ, "PRODSMART_API_KEY": options["api_key"],
               "PRODSMART_API_SECRET": options["api_secret"]}
        with agent_log.open("wb") as out:
            agent = subprocess.Popen(["prodsmart-edge", "run", str(config)], env=env,
                                     stdout=out, stderr=subprocess.STDOUT)
        try:
            run_agent(agent, sandbox_url, metrics, agent_log)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    finally:
        sandbox.terminate()
        sandbox.wait(10)
    step("PASSED")


def run_agent(agent: subprocess.Popen[bytes], sandbox_url: str, metrics: str, log: Path) -> None:
    started = time.monotonic()
    wait_for("/healthz to answer 200", lambda: get(f"http://{metrics}/healthz")[0] == 200, 30, log)
    step(f"/healthz answered 200 after {time.monotonic() - started:.1f} s")
    while time.monotonic() - started < RUN_FOR:
        if agent.poll() is not None:
            fail(f"the agent exited with {agent.returncode} while running", log)
        time.sleep(0.5)
    status, body = get(f"http://{metrics}/healthz")
    if status != 200:
        fail(f"/healthz answered {status} after {RUN_FOR:.0f} s: {body!r}", log)
    healthcheck(metrics, log)
    ledger = json.loads(get(f"{sandbox_url}/_sandbox/ledger")[1])
    kinds = [call["endpoint"] for call in ledger["accepted"]]
    if "counter" not in kinds or "startstop" not in kinds:
        fail(f"the sandbox accepted {kinds}: expected counter and startstop calls", log)
    if ledger["rejected"]:
        fail(f"the sandbox rejected calls: {ledger['rejected']}", log)
    step(f"the sandbox accepted {len(kinds)} calls ({kinds.count('counter')} counter, "
         f"{kinds.count('startstop')} startstop), rejected none")
    agent.send_signal(signal.SIGTERM)
    try:
        code = agent.wait(30)
    except subprocess.TimeoutExpired:
        fail("the agent did not stop within 30 s of SIGTERM", log)
    if code != 0:
        fail(f"the agent exited {code} on SIGTERM (expected 0)", log)
    step("SIGTERM: the agent stopped with exit code 0")
    database = Path(setting(Path(sys.argv[1]), "storage", "path"))
    if not database.is_file():
        fail(f"no database at {database}", log)
    step(f"the database is at {database} ({database.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
