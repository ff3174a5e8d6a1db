"""A reload while a debounced stop becomes due: the stop is sent exactly once.

The reload used to await a commit from outside the pipeline's loop while that loop went on
ticking: a stop that became due during that await was wiped (never sent) or committed twice.
The commit is slowed here (a slow disk) so that the stop falls due while the reload waits.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config.loader import load_config
from agent.outbox.store import Outbox
from agent.runtime.service import Agent
from agent.sandbox import SandboxOptions
from agent.uplink.client import Credentials
from tests.support.fixtures_mqtt import Mosquitto, Publisher, mosquitto
from tests.support.harness import start_sandbox, write_config

__all__ = ["mosquitto"]

CONFIG = """
prodsmart: {{url: {url}, timeout: 2s, retry_min: 100ms, retry_max: 1s}}
storage: {{path: {db}, commit_interval: 50ms}}
connections:
  broker: {{mqtt: {{host: 127.0.0.1, port: {port}, client_id: reload-race, reconnect_min: 100ms}}}}
machines:
  M1:
    connection: broker
    counter: {{topic: m1/count}}
    running: {{topic: m1/running}}
    min_duration: 300ms
"""


@pytest.mark.timeout(60)
async def test_a_stop_that_falls_due_during_a_reload_is_sent_once(mosquitto: Mosquitto,
                                                                 tmp_path: Path) -> None:
    options = SandboxOptions()
    sandbox = start_sandbox(options)
    path = write_config(tmp_path / "agent.yaml", CONFIG.format(url=sandbox.url, db=tmp_path / "agent.db",
                                                                port=mosquitto.port))
    agent = Agent(load_config(path), Credentials(options.api_key, options.api_secret))
    slow = Outbox.commit

    async def slow_commit(self: Outbox, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.25)  # a slow disk
        await slow(self, *args, **kwargs)

    pub = await asyncio.to_thread(Publisher, mosquitto.port, "line-gateway")
    task = asyncio.create_task(agent.run())
    try:
        await _until(lambda: agent.connections.get("broker") is not None and agent.connections["broker"].up)
        await asyncio.to_thread(pub.many, [("m1/count", "10"), ("m1/running", "1")])
        await asyncio.sleep(0.5)
        await asyncio.to_thread(pub.many, [("m1/count", "15")])
        await _until(lambda: sandbox.ledger().counters.get("M1", {}).get("count") == 5)
        Outbox.commit = slow_commit  # type: ignore[method-assign]
        # Publish-on-change, not retained: this stop is never sent again by the publisher.
        await asyncio.to_thread(pub.many, [("m1/running", "0")])
        await asyncio.sleep(0.15)
        agent.reload_requested.set()
        await asyncio.sleep(2.0)
        Outbox.commit = slow  # type: ignore[method-assign]
        await _until(lambda: sandbox.ledger().runs.get("M1"), within=5)
        await asyncio.sleep(1.0)
        runs = [int(r["running"]) for r in sandbox.ledger().runs["M1"]]
        assert runs == [0]
        assert not any(sandbox.ledger().repeats.values())
        assert not task.done()
    finally:
        Outbox.commit = slow  # type: ignore[method-assign]
        agent.stopping.set()
        await asyncio.wait_for(task, 20)
        await asyncio.to_thread(pub.close)
        sandbox.stop()


async def _until(predicate: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        await asyncio.sleep(0.05)
