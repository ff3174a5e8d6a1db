"""Upgrades keep everything: a release's database opened, migrated and delivered by this version.

The fixture (tests/deploy/fixtures/release-v1.*, written by make_release_db.py with the release's
code) holds queued counter and startstop calls (one in flight when the agent was killed), pending
parameters, a dead letter and the machine logic's state. This version must migrate it to its own
SCHEMA_VERSION, deliver every queued call exactly once, keep the dead letter and count on from the
persisted totals; a database written by a newer version is refused and left byte for byte as it was.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core.errors import PlainError
from agent.outbox.schema import SCHEMA_VERSION
from agent.outbox.store import Outbox
from agent.sandbox import Sandbox
from tests.conftest import free_port
from tests.deploy.fixtures.make_release_db import MACHINES
from tests.support.fixtures_modbus import ModbusServer, modbus_server
from tests.support.harness import AGENT_PROLOGUE, ROOT, AgentProcess, agent_env, start_sandbox, wait_until

__all__ = ["modbus_server"]

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RELEASES = sorted(FIXTURES.glob("release-v*.db"))


def _manifest(db: Path) -> dict[str, Any]:
    return json.loads(db.with_suffix(".json").read_text(encoding="utf-8"))


def _version(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?immutable=1", uri=True) as conn:  # no -wal/-shm made
        version = int(conn.execute("SELECT version FROM schema_version").fetchone()[0])
    conn.close()
    return version


def _digest(folder: Path) -> dict[str, str]:
    """Every file of the folder (the database and any -wal/-shm) and the hash of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _calls(ledger: Any, machine: str) -> list[dict[str, Any]]:
    """What Prodsmart applied for a machine, in order, without the parameters riding on counter calls."""
    return [{"endpoint": c["endpoint"], "body": {k: v for k, v in c["body"].items() if k != "parameters"}}
            for c in ledger.accepted if c["machine"] == machine and c["endpoint"] != "parameters"]


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    box = start_sandbox()
    yield box
    box.stop()


@pytest.fixture(params=RELEASES, ids=[p.stem for p in RELEASES])
def release(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of a release's database in a state directory of its own, and its manifest."""
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(request.param, state / "agent.db")
    return state / "agent.db", _manifest(request.param)


def _config(tmp_path: Path, sandbox: Sandbox, db: Path, modbus_port: int) -> Path:
    text = AGENT_PROLOGUE.format(url=sandbox.url, db=db, metrics_port=free_port())
    path = tmp_path / "agent.yaml"
    path.write_text(text + MACHINES.format(modbus_port=modbus_port), encoding="utf-8")
    return path


def test_the_fixtures_are_release_databases_this_version_can_upgrade() -> None:
    assert RELEASES, "no release database in tests/deploy/fixtures (run make_release_db.py)"
    for db in RELEASES:
        manifest = _manifest(db)
        assert _version(db) == manifest["schema_version"] <= SCHEMA_VERSION
        assert not db.with_name(db.name + "-wal").exists(), "a fixture must be closed (no WAL file)"
        kinds = {c["endpoint"] for c in manifest["queued"]}
        assert kinds == {"counter", "startstop"} and manifest["dead_letters"] and manifest["states"]


def _layout(db: Path) -> dict[str, Any]:
    """Every table, index and trigger, with each table's columns (name, type, not null, default, key)."""
    with sqlite3.connect(f"file:{db}?immutable=1", uri=True) as conn:
        names = conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
        layout = {f"{kind} {name}": [tuple(c[1:]) for c in conn.execute(f"PRAGMA table_info('{name}')")]
                  if kind == "table" else [] for kind, name in names}
    conn.close()
    return layout


def test_a_migrated_release_database_has_the_layout_of_a_new_one(
    release: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    db = release[0]
    fresh = tmp_path / "fresh.db"
    asyncio.run(_open_close(db))
    asyncio.run(_open_close(fresh))
    assert _version(db) == _version(fresh) == SCHEMA_VERSION
    assert _layout(db) == _layout(fresh)


async def _open_close(db: Path) -> None:
    box = await Outbox.open(str(db))
    await box.close()


@pytest.mark.timeout(150)
def test_an_upgrade_delivers_the_queue_exactly_once_and_keeps_the_rest(
    release: tuple[Path, dict[str, Any]], sandbox: Sandbox, modbus_server: Any, tmp_path: Path
) -> None:
    db, manifest = release
    queued = manifest["queued"]
    machines = sorted(manifest["states"])
    # 1. The PLC is unreachable at first: what reaches Prodsmart is the release's queue alone.
    config = _config(tmp_path, sandbox, db, free_port())
    with AgentProcess(config, agent_env(sandbox)) as agent:
        wait_until(lambda: len([c for c in sandbox.ledger().accepted if c["endpoint"] != "parameters"])
                   >= len(queued), timeout=60, message="the queued calls to arrive")
        assert agent.terminate() == 0, agent.output()
    ledger = sandbox.ledger()
    for machine in machines:
        expected = [{"endpoint": c["endpoint"], "body": c["body"]} for c in queued if c["machine"] == machine]
        assert _calls(ledger, machine) == expected, machine
    assert not ledger.rejected
    assert ledger.parameters.get("PRESS-01") == manifest["parameters"]["PRESS-01"]
    assert _version(db) == SCHEMA_VERSION
    # What the release kept is still there: the dead letters, the logic state, an empty queue.
    after = asyncio.run(_inspect(db))
    assert after["queued"] == []
    assert after["dead_letters"] == [(d["id"], d["machine"], d["body"], d["status"])
                                     for d in manifest["dead_letters"]]
    for machine in machines:
        assert after["states"][machine]["counters"] == manifest["states"][machine]["counters"], machine

    # 2. The PLC is back with new parts: the totals go on from the release's baselines, once.
    plc = manifest["plc"]
    server: ModbusServer = modbus_server()
    server.set_value(1, "holding", 100, plc["PRESS-01"]["counter"] + 25, "uint32")
    server.set_value(1, "holding", 102, plc["PRESS-01"]["Scrap"], "uint16")
    server.set_value(1, "input", 30, plc["PRESS-01"]["temperature"], "uint16")
    server.set_value(1, "holding", 110, plc["PRESS-01"]["reason"], "uint16")
    server.set(1, "coil", 12, [plc["PRESS-01"]["running"]])
    server.set_value(1, "holding", 200, plc["WELD-02"]["counter"] + 10, "uint32")
    server.set(1, "coil", 20, [plc["WELD-02"]["running"]])
    config = _config(tmp_path, sandbox, db, server.port)
    before = {m: len(_calls(sandbox.ledger(), m)) for m in machines}
    last = {m: max(c["body"]["count"] for c in queued if c["machine"] == m and "count" in c["body"])
            for m in machines}
    with AgentProcess(config, agent_env(sandbox)) as agent:
        wait_until(lambda: all(sandbox.ledger().counters.get(m, {}).get("count") == last[m] + extra
                               for m, extra in (("PRESS-01", 25), ("WELD-02", 10))),
                   timeout=60, message="the new parts to arrive")
        assert agent.terminate() == 0, agent.output()
    ledger = sandbox.ledger()
    for machine, extra in (("PRESS-01", 25), ("WELD-02", 10)):
        new = _calls(ledger, machine)[before[machine]:]
        # One counter call with the new total; no run-state call: the release had sent "running".
        assert new == [{"endpoint": "counter", "body": {"count": last[machine] + extra}}], machine
    assert not ledger.rejected


async def _inspect(db: Path) -> dict[str, Any]:
    box = await Outbox.open(str(db))
    try:
        return {"queued": await box.queued(), "states": await box.load_states(),
                "dead_letters": [(d.id, d.machine, d.body, d.status) for d in await box.dead_letters()]}
    finally:
        await box.close()


def _from_the_future(release: Path, journal: str) -> None:
    """The release's database as a newer version would leave it: a higher schema version, and
    perhaps another journal mode (switching it back to WAL would rewrite the file's header)."""
    with sqlite3.connect(release) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.execute(f"PRAGMA journal_mode = {journal}")
    conn.close()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_database_of_a_newer_version_is_refused_and_left_untouched(
    release: tuple[Path, dict[str, Any]], tmp_path: Path, journal: str
) -> None:
    db = release[0]
    _from_the_future(db, journal)
    before = _digest(db.parent)
    with pytest.raises(PlainError, match=r"a newer prodsmart-edge wrote it \(schema \d+, this version knows"):
        asyncio.run(Outbox.open(str(db)))
    assert _digest(db.parent) == before
    # The technician sees one plain sentence from every command that opens it; nothing starts.
    config = tmp_path / "agent.yaml"
    config.write_text(AGENT_PROLOGUE.format(url="http://127.0.0.1:9", db=db, metrics_port=free_port())
                      + MACHINES.format(modbus_port=free_port()), encoding="utf-8")
    for command in (["run", str(config)], ["status", str(config)], ["dead-letters", str(config), "list"]):
        done = subprocess.run([sys.executable, "-m", "agent", *command], cwd=ROOT,
                              env=agent_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "a newer prodsmart-edge wrote it" in done.stderr, (command, done.stderr)
        assert "Traceback" not in done.stderr
        assert _digest(db.parent) == before, command
