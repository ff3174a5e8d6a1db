"""The systemd unit, run as systemd would: its ExecStart, credentials, paths and notify protocol.

The unit is parsed, not copied: the agent is started with the unit's ExecStartPre/ExecStart
arguments (the console script resolved through pyproject.toml), its credentials laid out in a
$CREDENTIALS_DIRECTORY under the names LoadCredential= gives them, its state and configuration
directories (under a stand-in root), its UMask, and a real NOTIFY_SOCKET. So a path, a script
name or a credential name that drifts between the unit and the code fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from agent.config.loader import load_config
from agent.config.sections import StorageSection
from agent.sandbox import Sandbox
from tests.conftest import free_port
from tests.support.harness import ROOT, agent_env, start_sandbox, wait_until

UNIT_FILE = ROOT / "systemd" / "prodsmart-edge.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: sections, repeated keys kept in order, comments, continuation lines."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


SERVICE = parse_unit(UNIT_FILE.read_text(encoding="utf-8"))["Service"]


def one(key: str) -> str:
    values = SERVICE.get(key, [])
    assert len(values) == 1, f"{key}= should be set once in the unit, found {values}"
    return values[0]


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min|)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"ms": 0.001, "s": 1.0, "": 1.0, "min": 60.0}[unit]


STATE_DIR = "/var/lib/" + one("StateDirectory")
CONFIG_DIR = "/etc/" + one("ConfigurationDirectory")
CREDENTIALS = [tuple(c.split(":", 1)) for c in SERVICE.get("LoadCredential", [])]


def command_line(key: str) -> list[str]:
    """The ExecStart-style command of `key`, as the Python command that runs the same entry point."""
    argv = shlex.split(one(key).lstrip("-@:+!"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    name = Path(argv[0]).name
    assert name in scripts, f"the unit runs {argv[0]}, but pyproject.toml installs no script {name!r}"
    assert argv[0] == f"/opt/prodsmart-edge/bin/{name}", "the unit must run the venv that install.sh makes"
    module, _, func = scripts[name].partition(":")
    # systemd tells the main process its own PID for the watchdog: the same process, as after exec.
    launcher = (f"import os, sys; os.environ['WATCHDOG_PID'] = str(os.getpid()); sys.argv[0] = {name!r}; "
                f"from {module} import {func}; sys.exit({func}())")
    return [sys.executable, "-c", launcher, *argv[1:]]


def test_the_units_paths_are_the_codes() -> None:
    """What the unit names and what the code and the example config expect are the same places."""
    assert one("WorkingDirectory") == STATE_DIR
    default_db = StorageSection().path
    assert os.path.dirname(default_db) == STATE_DIR, "the default database is not in StateDirectory"
    example = load_config(ROOT / "config" / "agent.example.yaml")
    assert os.path.dirname(example.storage.path) == STATE_DIR
    for key in ("ExecStartPre", "ExecStart"):
        config = shlex.split(one(key))[-1]
        assert os.path.dirname(config) == CONFIG_DIR, f"{key} reads its config outside {CONFIG_DIR}"
    assert {name for name, _ in CREDENTIALS} == {"prodsmart_api_key", "prodsmart_api_secret"}
    for _, source in CREDENTIALS:
        assert source.startswith(CONFIG_DIR + "/credentials/"), source
    for env_file in SERVICE.get("EnvironmentFile", []):
        assert os.path.dirname(env_file.lstrip("-")) == CONFIG_DIR
    assert one("Type") == "notify" and one("NotifyAccess") == "main"


class NotifySocket:
    """systemd's end of sd_notify: a unix datagram socket collecting what the service sends."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def receive(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return self.messages
            self.messages.extend(data.decode().splitlines())

    def saw(self, prefix: str, after: int = 0) -> bool:
        return any(m.startswith(prefix) for m in self.receive()[after:])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    box = start_sandbox()
    yield box
    box.stop()


@pytest.fixture
def root() -> Iterator[Path]:
    """A stand-in for /: short, so that the notify socket's path fits in sun_path."""
    with tempfile.TemporaryDirectory(prefix="unit-") as folder:
        yield Path(folder)


CONFIG = """
prodsmart: {{url: "{url}", retry_min: 100ms, retry_max: 1s}}
storage: {{path: "{db}", commit_interval: 50ms}}
metrics: {{listen: "127.0.0.1:{metrics_port}"}}
connections:
  sim: {{simulated: {{seed: 3, poll: 100ms, rate: 20, cycle: 4s, stopped: 1s}}}}
machines:
  UNIT-01:
    connection: sim
    counter: {{signal: count, unit: "1"}}
    running: {{signal: running, unit: "1"}}
"""


@pytest.mark.timeout(120)
def test_the_agent_runs_as_the_unit_says(sandbox: Sandbox, root: Path) -> None:
    def at(path: str) -> Path:
        return root / path.lstrip("/")

    state = at(STATE_DIR)
    state.mkdir(parents=True, mode=int(one("StateDirectoryMode"), 8))
    at(CONFIG_DIR).mkdir(parents=True)
    config_file = shlex.split(one("ExecStart"))[-1]
    at(config_file).write_text(CONFIG.format(url=sandbox.url, db=at(StorageSection().path),
                                             metrics_port=free_port()), encoding="utf-8")
    # The secrets as an installer leaves them (root-only files), and as systemd hands them over.
    opts = sandbox.options
    secrets = {"prodsmart_api_key": opts.api_key, "prodsmart_api_secret": opts.api_secret}
    credentials = root / "run" / "credentials" / "prodsmart-edge.service"
    credentials.mkdir(parents=True)
    for name, source in CREDENTIALS:
        assert name in secrets, f"the unit loads a credential the code does not read: {name}"
        at(source).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        at(source).write_text(secrets[name] + "\n", encoding="utf-8")
        (credentials / name).write_bytes(at(source).read_bytes())
        (credentials / name).chmod(0o400)
    env = agent_env(None, {"CREDENTIALS_DIRECTORY": str(credentials)})
    for secret in ("PRODSMART_API_KEY", "PRODSMART_API_SECRET"):
        env.pop(secret)

    def start(key: str, extra: dict[str, str]) -> subprocess.Popen[bytes]:
        argv = [a.replace(config_file, str(at(config_file))) for a in command_line(key)]
        return subprocess.Popen(argv, cwd=at(one("WorkingDirectory")), env={**env, **extra},
                                umask=int(one("UMask"), 8), stdout=log, stderr=subprocess.STDOUT)

    notify = NotifySocket(root)
    log = (root / "journal.log").open("w+b")
    try:
        pre = start("ExecStartPre", {})
        assert pre.wait(60) == 0, (root / "journal.log").read_text()
        watchdog = int(seconds(one("WatchdogSec")) * 1_000_000)
        main = start("ExecStart", {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(watchdog)})
        try:
            _run(main, sandbox, notify, log)
        finally:
            if main.poll() is None:
                main.kill()
                main.wait(10)
    finally:
        log.close()
        notify.close()
    database = at(StorageSection().path)
    assert database.is_file()
    assert database.stat().st_mode & 0o077 == 0, "UMask=0077: the database must be private"
    written = {p for p in root.rglob("*") if p.is_file()} - {root / "journal.log"}
    outside = [p for p in written if not (p.is_relative_to(state) or p.is_relative_to(at(CONFIG_DIR))
                                          or p.is_relative_to(credentials))]
    assert not outside, f"the agent wrote outside its state directory: {outside}"


def _run(main: subprocess.Popen[bytes], sandbox: Sandbox, notify: NotifySocket, log: IO[bytes]) -> None:
    def journal() -> str:
        return Path(log.name).read_text(errors="replace")

    wait_until(lambda: notify.saw("READY=1") or main.poll() is not None,
               timeout=seconds(one("TimeoutStartSec")))
    assert main.poll() is None, journal()
    wait_until(lambda: notify.saw("STATUS=") and notify.saw("WATCHDOG=1"), timeout=10,
               message="STATUS= and WATCHDOG=1 on the notify socket")
    # The credentials worked: Prodsmart accepted calls authenticated with them.
    wait_until(lambda: any(c["endpoint"] == "counter" for c in sandbox.ledger().accepted), timeout=30,
               message="a counter call accepted by the sandbox")
    assert not [r for r in sandbox.ledger().rejected if r["status"] in (401, 403)]
    # ExecReload, word for word.
    seen = len(notify.receive())
    reload = shlex.split(one("ExecReload").replace("$MAINPID", str(main.pid)))
    assert subprocess.run(reload, timeout=10).returncode == 0
    wait_until(lambda: notify.saw("RELOADING=1", seen) and notify.saw("READY=1", seen), timeout=20,
               message="RELOADING=1 then READY=1 after ExecReload")
    # systemctl stop: SIGTERM (the unit's KillSignal), a clean exit within TimeoutStopSec.
    assert SERVICE.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]
    started = time.monotonic()
    main.send_signal(signal.SIGTERM)
    assert main.wait(seconds(one("TimeoutStopSec"))) == 0, journal()
    assert notify.saw("STOPPING=1")
    assert time.monotonic() - started < seconds(one("TimeoutStopSec"))
