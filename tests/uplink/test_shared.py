"""The company budget shared through a real redis-server: atomic bucket, shared 429 block, fallback, TLS."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
import pytest

from agent.config.secrets import redis_secrets
from agent.config.sections import BudgetSection, ProdsmartSection
from agent.core.metrics import Metrics
from agent.core.model import CounterChanged
from agent.outbox.store import Outbox
from agent.uplink.budget import open_budget
from agent.uplink.client import Uplink
from agent.uplink.shared import RedisAccess, SharedBudget
from tests.support.fixtures_prodsmart import FakeProdsmart
from tests.support.fixtures_redis import RedisServer, redis_server, redis_tls
from tests.uplink.test_client import CREDS, commit, drained, running, settings, until

__all__ = ["redis_server", "redis_tls"]  # fixtures


def shared(server: RedisServer, agent: str, per_minute: float = 600, metrics: Metrics | None = None,
           **cfg: object) -> SharedBudget:
    settings = BudgetSection.model_validate({"redis": server.url, "company": "acme", **cfg})
    access = RedisAccess(settings, password=server.password)
    return SharedBudget(per_minute, access, agent, metrics or Metrics())


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value("prodsmart_edge_" + name) or 0.0


async def greedy(budget: SharedBudget, seconds: float, times: list[float]) -> None:
    """Always backlogged, like an agent whose machines never stop: its next call's oldest part
    was made just after its previous call went."""
    end = time.monotonic() + seconds
    since = time.monotonic()
    while time.monotonic() < end:
        grant = await budget.acquire(age=time.monotonic() - since)
        if grant.granted:
            times.append(time.monotonic())
            since = time.monotonic()
        else:
            await asyncio.sleep(min(grant.wait, max(0.0, end - time.monotonic())))


async def test_agents_of_one_company_share_one_bucket(redis_server: RedisServer) -> None:
    a, b, other = (shared(redis_server, "a"), shared(redis_server, "b"),
                   shared(redis_server, "c", company="another"))
    got: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    try:
        await asyncio.gather(greedy(a, 3.0, got["a"]), greedy(b, 3.0, got["b"]), greedy(other, 3.0, got["c"]))
    finally:
        for budget in (a, b, other):
            await budget.close()
    rate = (600 - 2) / 60  # per second, after the burst of 2
    allowed = 2 + rate * 3.0
    together = len(got["a"]) + len(got["b"])
    assert allowed * 0.9 <= together <= allowed + 1
    assert abs(len(got["a"]) - len(got["b"])) <= 2  # by lag: they take turns
    assert allowed * 0.9 <= len(got["c"]) <= allowed + 1  # another company has its own bucket
    stamps = sorted(got["a"] + got["b"])
    for i, first in enumerate(stamps):  # never more than the bucket allows in any stretch
        later = [t for t in stamps[i:] if t - first <= 1.0]
        assert len(later) <= 2 + rate * 1.0 + 1


async def test_a_free_request_goes_to_the_agent_with_the_stalest_machine(redis_server: RedisServer) -> None:
    a, b = shared(redis_server, "a", per_minute=60), shared(redis_server, "b", per_minute=60)
    try:
        assert (await a.acquire(age=0)).granted  # the one request the bucket starts with
        stale, fresh = 100.0, 0.0
        waiting = await a.acquire(age=stale)  # a's machine waits for 100 s
        assert not waiting.granted and not (await b.acquire(age=fresh)).granted
        await asyncio.sleep(waiting.wait + 0.05)
        assert not (await b.acquire(age=fresh)).granted  # b comes first, but a's claim is older
        assert (await a.acquire(age=stale)).granted
    finally:
        await a.close()
        await b.close()


async def test_parameters_only_take_spare_budget_and_refunds_come_back(redis_server: RedisServer) -> None:
    a = shared(redis_server, "a", per_minute=60)  # burst 2, then ~1 a second
    try:
        assert (await a.acquire()).granted  # the bucket starts with one request
        assert not (await a.acquire(spare=True)).granted  # not full: a count may need it
        await a.refund()
        assert (await a.acquire()).granted  # the refunded request is there at once
        await asyncio.sleep(2.2)  # full again (2)
        assert (await a.acquire(spare=True)).granted
        b = shared(redis_server, "b", per_minute=60)
        try:
            while (await b.acquire(age=0)).granted:
                pass  # b is backlogged: once the bucket is empty it waits for its turn, claiming it
            await a.refund()
            await a.refund()  # the bucket is full again...
            assert not (await a.acquire(spare=True)).granted  # ...but b waits: nothing is spare
        finally:
            await b.close()
    finally:
        await a.close()


async def test_a_429_seen_by_one_agent_pauses_all(redis_server: RedisServer) -> None:
    a, b = shared(redis_server, "a"), shared(redis_server, "b")
    try:
        await a.block(2.0)
        grant = await b.acquire()
        assert grant.blocked and 1.5 < grant.wait <= 2.0
        await asyncio.sleep(2.1)
        assert (await b.acquire()).granted
    finally:
        await a.close()
        await b.close()


async def test_redis_down_falls_back_to_an_even_share_and_comes_back(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    a, b, c = (shared(redis_server, "a", 600, metrics), shared(redis_server, "b"), shared(redis_server, "c"))
    try:
        for budget in (b, c, a):
            await budget.acquire()
        assert a.describe()["mode"] == "shared" and a.describe()["agents"] == 3
        redis_server.kill()
        with caplog.at_level(logging.INFO, logger="agent.uplink.shared"):
            for _ in range(5):
                await a.acquire()
            await a.keepalive()
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1 and "200.0 requests a minute" in warnings[0].getMessage()
            assert a.describe()["mode"] == "fallback" and a.describe()["requests_per_minute"] == 200
            assert sample(metrics, "budget_shared") == 0 and sample(metrics, "budget_fallbacks_total") == 1
            assert sample(metrics, "budget_requests_per_minute") == 200
            redis_server.start()
            deadline = time.monotonic() + 10
            while a.describe()["mode"] != "shared":
                assert time.monotonic() < deadline, "did not go back to the shared budget"
                await a.keepalive()
                await asyncio.sleep(0.2)
        assert sample(metrics, "budget_shared") == 1 and sample(metrics, "budget_requests_per_minute") == 600
        assert any("answers again" in r.getMessage() for r in caplog.records)
    finally:
        for budget in (a, b, c):
            await budget.close()


async def test_a_configured_fallback_share_and_a_redis_never_reached(tmp_path: Path) -> None:
    nowhere = RedisServer(tmp_path / "none")  # never started: nothing listens on its port
    configured = shared(nowhere, "a", 100, fallback_per_minute=30)
    unknown = shared(nowhere, "b", 100)
    try:
        assert (await configured.acquire()).granted  # the fallback bucket starts with one request
        assert configured.describe()["requests_per_minute"] == 30
        await unknown.acquire()
        assert unknown.describe()["requests_per_minute"] == 25  # never saw the others: a quarter
    finally:
        await configured.close()
        await unknown.close()


async def test_tls_with_a_password_from_the_secrets(redis_tls: RedisServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert redis_tls.pki is not None
    monkeypatch.setenv("PRODSMART_REDIS_PASSWORD", "s3cret-pass")
    monkeypatch.delenv("PRODSMART_REDIS_USERNAME", raising=False)
    settings = ProdsmartSection.model_validate({"requests_per_minute": 100, "budget": {
        "redis": redis_tls.url, "tls_ca_file": str(redis_tls.pki.ca)}})
    budget = open_budget(settings, Metrics(), "tls-agent", *redis_secrets())
    try:
        assert (await budget.acquire()).granted
        assert budget.describe()["mode"] == "shared"
    finally:
        await budget.close()
    # An impostor: a server whose certificate the configured CA did not sign.
    wrong = settings.model_copy(update={"budget": settings.budget.model_copy(  # type: ignore[union-attr]
        update={"tls_ca_file": str(redis_tls.pki.other_ca)})})
    budget = open_budget(wrong, Metrics(), "tls-agent", *redis_secrets())
    try:
        await budget.acquire()
        assert budget.describe()["mode"] == "fallback"
    finally:
        await budget.close()


@pytest.mark.parametrize("url", ["redis://user:pw@10.0.0.5:6379/0", "redis://:pw@10.0.0.5/0",
                                 "http://10.0.0.5:6379", "redis:///0"])
def test_the_redis_url_carries_no_credentials(url: str) -> None:
    with pytest.raises(ValueError):
        BudgetSection.model_validate({"redis": url})


async def test_weights_stretch_lags_and_shares(redis_server: RedisServer) -> None:
    metrics = Metrics()
    heavy = shared(redis_server, "heavy", 60, metrics, weight=3)
    light = shared(redis_server, "light", 60)
    try:
        assert (await heavy.acquire()).granted  # the bucket's first request
        waiting = await light.acquire(age=100)  # 100 s stale, weight 1
        assert not waiting.granted and not (await heavy.acquire(age=40)).granted  # 40 s x 3
        await asyncio.sleep(waiting.wait + 0.05)
        assert not (await light.acquire(age=100)).granted
        assert (await heavy.acquire(age=40)).granted
        redis_server.kill()
        await heavy.acquire()
        assert heavy.describe()["requests_per_minute"] == 45  # 3 of the 4 weights seen
    finally:
        await heavy.close()
        await light.close()


async def test_agents_that_disagree_on_the_budget_are_told_once(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    a, b = shared(redis_server, "a", 96), shared(redis_server, "b", 60)
    try:
        with caplog.at_level(logging.WARNING, logger="agent.uplink.shared"):
            for _ in range(3):
                await a.acquire()
                await b.acquire()
        told = [r.getMessage() for r in caplog.records if "disagree" in r.getMessage()]
        assert len(told) == 2 and "this one has 60, another 96" in told[0]
    finally:
        await a.close()
        await b.close()


async def test_a_429_to_one_uplink_pauses_the_other_agents_uplink(redis_server: RedisServer,
                                                                  tmp_path: Path) -> None:
    """Two agents' uplinks on one shared budget: Prodsmart answers the first one 429 with
    Retry-After 2; the second agent sends nothing before those 2 s are over."""
    fakes = [FakeProdsmart(), FakeProdsmart()]
    fakes[0].fail("A1", httpx.Response(429, headers={"Retry-After": "2"}))
    boxes = [await Outbox.open(str(tmp_path / f"{n}.db")) for n in ("a", "b")]
    budgets = [shared(redis_server, n) for n in ("a", "b")]
    uplinks = [Uplink(box, settings(), CREDS, Metrics(), transport=fake.transport(), budget=budget)
               for box, fake, budget in zip(boxes, fakes, budgets, strict=True)]
    try:
        await commit(boxes[0], CounterChanged("A1", 1))
        async with running(uplinks[0]):
            await until(lambda: bool(fakes[0].seen))
            refused = time.monotonic()
            await commit(boxes[1], CounterChanged("B1", 1))
            async with running(uplinks[1]):
                assert uplinks[1].paused is None
                await drained(boxes[1], within=5.0)
                assert fakes[1].seen[0].time - refused >= 1.5  # Retry-After 2, rounded by Redis' clock
                await drained(boxes[0], within=5.0)
        assert [s.status for s in fakes[0].seen] == [429, 200]
    finally:
        for budget in budgets:
            await budget.close()
        for box in boxes:
            await box.close()


async def test_a_redis_user_from_systemd_credentials_and_a_wrong_password_never_logged(
        redis_tls: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    assert redis_tls.pki is not None
    admin = shared(redis_tls, "admin", tls_ca_file=str(redis_tls.pki.ca))
    await admin._redis.execute_command("ACL", "SETUSER", "edge", "on", ">edge-pass", "~*", "+@all")
    await admin.close()
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "prodsmart_redis_username").write_text("edge\n")
    (creds / "prodsmart_redis_password").write_text("edge-pass\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.delenv("PRODSMART_REDIS_USERNAME", raising=False)
    monkeypatch.delenv("PRODSMART_REDIS_PASSWORD", raising=False)
    settings = ProdsmartSection.model_validate({"budget": {"redis": redis_tls.url,
                                                           "tls_ca_file": str(redis_tls.pki.ca)}})
    assert redis_secrets() == ("edge", "edge-pass")
    budget = open_budget(settings, Metrics(), "edge-agent", *redis_secrets())
    try:
        assert (await budget.acquire()).granted and budget.describe()["mode"] == "shared"
    finally:
        await budget.close()
    (creds / "prodsmart_redis_password").write_text("not-the-pass\n")
    budget = open_budget(settings, Metrics(), "edge-agent", *redis_secrets())
    try:
        with caplog.at_level(logging.DEBUG):
            await budget.acquire()
        assert budget.describe()["mode"] == "fallback"
        assert "not-the-pass" not in caplog.text and "Cannot reach Redis" in caplog.text
    finally:
        await budget.close()
