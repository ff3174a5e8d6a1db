"""End-to-end helpers: the Prodsmart sandbox, and the agent run as a separate process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from agent.sandbox import Sandbox, SandboxOptions

ROOT = Path(__file__).resolve().parents[2]

# The sections every protocol end-to-end config starts with: fast retries against the sandbox,
# quick group commits, metrics on a free port. Fill with .format(url=, db=, metrics_port=, ...).
AGENT_PROLOGUE = """
prodsmart:
  url: {url}
  timeout: 2s
  retry_min: 100ms
  retry_max: 1s
storage:
  path: {db}
  commit_interval: 50ms
metrics:
  listen: 127.0.0.1:{metrics_port}
"""
T = TypeVar("T")


def start_sandbox(options: SandboxOptions | None = None) -> Sandbox:
    """An in-process sandbox on a free loopback port (stop it with `.stop()`)."""
    return Sandbox(options or SandboxOptions()).start()


def agent_env(sandbox: Sandbox | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    opts = sandbox.options if sandbox is not None else SandboxOptions()
    env["PRODSMART_API_KEY"] = opts.api_key
    env["PRODSMART_API_SECRET"] = opts.api_secret
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra or {})
    return env


class AgentProcess:
    """`python -m agent run CONFIG` in its own process, output captured to a file."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.config_path = config_path
        self.env = env if env is not None else agent_env()
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="agent-", suffix=".log", delete=False)
        self.starts = 0

    def start(self) -> AgentProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", str(self.config_path), *self.args],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
        )
        self.starts += 1
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, like a power cut for the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"agent did not stop within {timeout}s; output:\n{self.output()}") from None

    def output(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def close(self) -> None:
        self.kill()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.1,
               message: str = "") -> T:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
