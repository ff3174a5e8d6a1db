"""The uplink against a strict Prodsmart double (httpx.MockTransport) and against the sandbox server."""

from __future__ import annotations

import asyncio
import email.utils
import io
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx
import pytest

from agent.config.sections import ProdsmartSection
from agent.core.metrics import Metrics
from agent.core.model import CounterChanged, Event, ParametersChanged, RunStateChanged
from agent.outbox.store import Outbox
from agent.sandbox import Fault, Sandbox, SandboxOptions
from agent.uplink.auth import TokenAuth, redact
from agent.uplink.client import Credentials, Uplink, parse_retry_after
from agent.uplink.ratelimit import TokenBucket
from tests.support.fixtures_prodsmart import APPLIED_THEN_TIMEOUT, FakeProdsmart

CREDS = Credentials("key", "secret")


def settings(**changes: Any) -> ProdsmartSection:
    base = ProdsmartSection(url="http://prodsmart.test", retry_min=0.05, retry_max=0.2, timeout=2)
    # Faster than the 120/min a config allows, so that tests take milliseconds.
    return base.model_copy(update={"requests_per_minute": 6000, **changes})


@pytest.fixture
def fake() -> FakeProdsmart:
    return FakeProdsmart()


def make(box: Outbox, fake: FakeProdsmart, metrics: Metrics | None = None, **kw: Any) -> Uplink:
    options = {k: kw.pop(k) for k in list(kw) if k in ProdsmartSection.model_fields}
    return Uplink(box, settings(**options), CREDS, metrics or Metrics(), transport=fake.transport(), **kw)


@asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(uplink.run())
    try:
        yield task
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def drained(box: Outbox, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while await box.heads():
        assert time.monotonic() < deadline, f"still queued: {await box.queued()}"
        await asyncio.sleep(0.01)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value("prodsmart_edge_" + name, labels) or 0.0


async def commit(box: Outbox, *events: Event) -> None:
    await box.commit({}, list(events), now=time.time())


def stop(machine: str, running: bool = False) -> RunStateChanged:
    return RunStateChanged(machine, running, "Stopped")


# ---------------------------------------------------------------- order and fairness


async def test_calls_go_in_order_and_are_acknowledged(box: Outbox, fake: FakeProdsmart) -> None:
    m = "LINE 1/A"
    await commit(box, CounterChanged(m, 5, {"Scrap": 1}), stop(m), CounterChanged(m, 7), stop(m, True),
                 ParametersChanged(m, {"t": 2}))
    metrics = Metrics()
    async with running(make(box, fake, metrics)):
        await drained(box)
    assert fake.applied == [
        ("LINE 1/A", "counter", {"count": 5, "waste": [{"code": "Scrap", "quantity": 1}],
                                 "parameters": [{"name": "t", "value": 2}]}),
        ("LINE 1/A", "startstop", {"type": "Stopped", "running": 0}),
        ("LINE 1/A", "counter", {"count": 7}),
        ("LINE 1/A", "startstop", {"type": "Stopped", "running": 1}),
    ]
    assert fake.seen[0].path == "/api/machines/LINE%201%2FA/counter"
    (stats,) = await box.stats(time.time())
    assert (stats.acked_count, stats.acked_running, stats.depth) == (7, True, 0)
    assert sample(metrics, "calls_total", endpoint="counter", status="200") == 2


async def test_startstop_then_counter_then_parameters(box: Outbox, fake: FakeProdsmart) -> None:
    await commit(box, ParametersChanged("A", {"t": 1}), CounterChanged("B", 3), stop("C"),
                 CounterChanged("D", 4))
    async with running(make(box, fake, concurrency=1)):
        await drained(box)
    assert [(m, e) for m, e, _ in fake.applied] == [
        ("C", "startstop"), ("B", "counter"), ("D", "counter"), ("A", "parameters")]


async def test_lanes_take_turns(box: Outbox, fake: FakeProdsmart) -> None:
    await commit(box, *[stop(m, bool(i % 2)) for i in range(3) for m in ("A", "B", "C")])
    async with running(make(box, fake, concurrency=1)):
        await drained(box)
    assert [m for m, _, _ in fake.applied] == ["A", "B", "C"] * 3


async def test_one_call_per_machine_in_flight_and_a_few_in_parallel(box: Outbox, fake: FakeProdsmart) -> None:
    fake.delay = 0.03
    await commit(box, *[stop(f"M{m}", bool(i % 2)) for i in range(3) for m in range(8)])
    async with running(make(box, fake)):
        await drained(box)
    assert len(fake.applied) == 24
    assert fake.max_in_flight_per_machine == 1
    assert 1 < fake.max_in_flight <= 4


async def test_a_commit_wakes_the_uplink(box: Outbox, fake: FakeProdsmart) -> None:
    uplink = make(box, fake)
    async with running(uplink):
        await asyncio.sleep(0.05)
        await commit(box, CounterChanged("A", 1))
        started = time.monotonic()
        uplink.wake()
        await until(lambda: len(fake.applied) == 1)
        assert time.monotonic() - started < 0.5


# ---------------------------------------------------------------- rate limit


def test_the_bucket_keeps_every_minute_under_the_limit() -> None:
    now = [0.0]
    bucket = TokenBucket(100, burst=2, clock=lambda: now[0])
    sent: list[float] = []
    while now[0] < 600:  # ten minutes of a greedy sender polling every 10 ms
        if bucket.try_take():
            sent.append(now[0])
        now[0] += 0.01
    worst = max(sum(1 for t in sent if start <= t < start + 60) for start in sent)
    assert worst <= 100
    assert len(sent) >= 970  # and it does use what it may


async def test_calls_never_exceed_the_rate(box: Outbox, fake: FakeProdsmart) -> None:
    await commit(box, *[CounterChanged(f"M{m}", 1) for m in range(15)])
    started = time.monotonic()
    async with running(make(box, fake, requests_per_minute=600)):
        await drained(box)
    assert time.monotonic() - started < 4
    times = [s.time for s in fake.seen]
    rate = (600 - 2) / 60
    for i, first in enumerate(times):
        for j in range(i + 1, len(times)):
            assert j - i + 1 <= 2 + rate * (times[j] - first + 0.05)


def test_retry_after_takes_seconds_or_a_date() -> None:
    assert parse_retry_after("7") == 7
    assert parse_retry_after(None) == 60 and parse_retry_after("soon") == 60
    when = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(when, now=1_000_000) == 30
    assert parse_retry_after("0") == 1 and parse_retry_after("99999999") == 3600


@pytest.mark.parametrize("fmt", ["seconds", "http-date"])
async def test_a_429_pauses_every_lane(
    box: Outbox, fake: FakeProdsmart, fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.uplink.client")
    after = "1" if fmt == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)
    fake.fail("A", httpx.Response(429, headers={"Retry-After": after}, text="slow down"))
    if fmt == "seconds":  # B is the probe after the pause: its 429 is the same episode, logged once
        fake.fail("B", httpx.Response(429, headers={"Retry-After": "1"}, text="slow down"))
    await commit(box, *[stop(m) for m in ("A", "B", "C", "D", "E", "F")])
    metrics = Metrics()
    uplink = make(box, fake, metrics, concurrency=1)
    async with running(uplink):
        await until(lambda: uplink.paused == "rate_limited")
        assert sample(metrics, "uplink_paused", reason="rate_limited") == 1
        await drained(box)
    limits = [s for s in fake.seen if s.status == 429]
    later = [s for s in fake.seen if s.time > limits[0].time]
    assert later and min(s.time for s in later) - limits[0].time >= 0.9
    assert len(fake.applied) == 6 and uplink.paused is None
    assert sample(metrics, "rate_limit_pauses_total") == len(limits) == (2 if fmt == "seconds" else 1)
    assert sample(metrics, "uplink_paused", reason="rate_limited") == 0
    warnings = [r for r in caplog.records if "rate limit is reached" in r.getMessage()]
    assert len(warnings) == 1 and "takes calls again" in caplog.text
    assert await box.dead_letters() == []


# ---------------------------------------------------------------- failures


async def test_5xx_and_network_errors_back_off_one_lane_only(box: Outbox, fake: FakeProdsmart) -> None:
    fake.fail("A", httpx.Response(503), httpx.ConnectError("refused"), httpx.Response(502))
    await commit(box, CounterChanged("A", 10), *[stop("B", bool(i % 2)) for i in range(6)])
    metrics = Metrics()
    async with running(make(box, fake, metrics, retry_min=0.3, retry_max=2)):
        await until(lambda: len([a for a in fake.applied if a[0] == "B"]) == 6)
        assert [a for a in fake.applied if a[0] == "A"] == []  # A is still backing off
        await drained(box)
    assert fake.counts == {"A": 10} and len(fake.requests_for("A")) == 4
    assert sample(metrics, "retries_total", endpoint="counter", reason="http_503") == 1
    assert sample(metrics, "retries_total", endpoint="counter", reason="network") == 1
    assert await box.dead_letters() == []


async def test_not_increasing_after_an_unknown_outcome_counts_as_delivered(
    box: Outbox, fake: FakeProdsmart, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail("A", APPLIED_THEN_TIMEOUT)  # applied, but the answer is lost
    await commit(box, CounterChanged("A", 10, {"Scrap": 2}), stop("A"))
    metrics = Metrics()
    caplog.set_level(logging.INFO, logger="agent.uplink.client")
    async with running(make(box, fake, metrics)):
        await drained(box)
    assert [s.status for s in fake.requests_for("A")] == [None, 400, 200]
    assert fake.counts == {"A": 10} and fake.running == {"A": 0}
    assert sample(metrics, "counter_already_delivered_total") == 1
    assert await box.dead_letters() == []
    (stats,) = await box.stats(time.time())
    assert stats.acked_count == 10 and stats.acked_waste == {"Scrap": 2}
    assert "already applied by an earlier attempt" in caplog.text


async def test_not_increasing_without_an_unknown_outcome_is_a_dead_letter(
    box: Outbox, fake: FakeProdsmart, caplog: pytest.LogCaptureFixture
) -> None:
    fake.counts["A"] = 100  # Prodsmart holds more than this agent ever counted
    await commit(box, CounterChanged("A", 50), stop("A"))
    metrics = Metrics()
    async with running(make(box, fake, metrics)):
        await drained(box)
    (dead,) = await box.dead_letters()
    assert (dead.machine, dead.status, dead.body) == ("A", 400, {"count": 50})
    assert "not greater" in dead.response
    assert fake.running == {"A": 0}  # the lane went on
    assert sample(metrics, "counter_already_delivered_total") == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "disagree" in errors[0].getMessage()


async def test_other_4xx_is_a_dead_letter_and_the_lane_goes_on(box: Outbox, fake: FakeProdsmart) -> None:
    fake.fail("A", httpx.Response(404, text="machine A does not exist"))
    await commit(box, stop("A"), CounterChanged("A", 3))
    async with running(make(box, fake)):
        await drained(box)
    (dead,) = await box.dead_letters()
    assert (dead.kind, dead.status, dead.response) == ("startstop", 404, "machine A does not exist")
    assert fake.counts == {"A": 3}


async def test_a_400_that_is_not_about_increasing_is_a_dead_letter_even_after_a_timeout(
    box: Outbox, fake: FakeProdsmart
) -> None:
    fake.fail("A", httpx.ReadTimeout("timed out"), httpx.Response(400, text="waste code Foo is unknown"))
    await commit(box, CounterChanged("A", 5, {"Foo": 1}))
    async with running(make(box, fake)):
        await until(lambda: len(fake.requests_for("A")) == 2)
        await drained(box)
    (dead,) = await box.dead_letters()
    assert dead.status == 400 and dead.attempts == 2 and fake.counts == {}


async def test_a_call_in_flight_when_the_uplink_stops_stays_queued_with_an_unknown_outcome(
    box: Outbox, fake: FakeProdsmart
) -> None:
    fake.delay = 5
    await commit(box, CounterChanged("A", 5))
    async with running(make(box, fake)):
        await until(lambda: len(fake.seen) == 1)
    fake.delay = 0
    head = (await box.heads())[0]
    call = await box.begin_attempt(head)
    assert call is not None and call.unknown and call.body == {"count": 5}


async def test_refused_credentials_pause_everything_without_dead_letters(
    box: Outbox, fake: FakeProdsmart, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.uplink.client")
    fake.accept_credentials = False
    await commit(box, CounterChanged("A", 1), stop("A"), stop("B"), CounterChanged("C", 4))
    metrics = Metrics()
    uplink = make(box, fake, metrics, auth_retry=0.2)
    async with running(uplink):
        await until(lambda: uplink.paused == "auth")
        await asyncio.sleep(0.6)
        refused = len(fake.seen)
        assert refused <= 3 + 4  # the first calls, then one probe every ~0.2 s
        assert sample(metrics, "uplink_paused", reason="auth") == 1
        fake.accept_credentials = True
        await drained(box)
        assert uplink.paused is None
    assert await box.dead_letters() == []
    assert fake.counts == {"A": 1, "C": 4} and fake.running == {"A": 0, "B": 0}
    assert sample(metrics, "auth_failures_total") >= 2
    alerts = [r for r in caplog.records if "refused the API credentials" in r.getMessage()]
    assert len(alerts) == 1 and alerts[0].levelno == logging.ERROR
    assert "accepts the API credentials again" in caplog.text


# ---------------------------------------------------------------- token authentication


async def test_token_auth_gets_a_token_and_renews_it_on_401(box: Outbox, fake: FakeProdsmart) -> None:
    metrics = Metrics()
    uplink = make(box, fake, metrics, auth="token")
    async with running(uplink):
        await commit(box, CounterChanged("A", 1))
        uplink.wake()
        await drained(box)
        assert fake.token_requests == ["GET", "POST"]  # none existed: created
        assert fake.requests_for("A")[-1].status == 200
        fake.expire_tokens()
        await commit(box, CounterChanged("A", 2))
        uplink.wake()
        await drained(box)
    assert fake.token_requests == ["GET", "POST", "DELETE", "POST"]
    assert [s.status for s in fake.requests_for("A")] == [200, 401, 200]
    assert fake.counts == {"A": 2} and sample(metrics, "auth_failures_total") == 0


async def test_a_token_is_renewed_before_it_expires(fake: FakeProdsmart) -> None:
    now = [1000.0]
    auth = TokenAuth(CREDS, "http://prodsmart.test/api/authorization", clock=lambda: now[0])
    async with httpx.AsyncClient(base_url="http://prodsmart.test", auth=auth,
                                 transport=fake.transport()) as client:
        assert (await client.post("/api/machines/A/counter", json={"count": 1})).status_code == 200
        first = fake.issued[-1]
        now[0] += 100 * 60
        assert (await client.post("/api/machines/A/counter", json={"count": 2})).status_code == 200
        assert fake.token_requests == ["GET", "POST"]
        now[0] += 11 * 60  # 1 h 51 min after the token was fetched
        assert (await client.post("/api/machines/A/counter", json={"count": 3})).status_code == 200
    assert fake.token_requests == ["GET", "POST", "DELETE", "POST"]
    assert fake.issued[-1] != first and fake.counts == {"A": 3}


async def test_a_refused_token_request_pauses_like_bad_credentials(box: Outbox, fake: FakeProdsmart) -> None:
    fake.accept_credentials = False
    await commit(box, CounterChanged("A", 1))
    uplink = make(box, fake, auth="token", auth_retry=0.2)
    async with running(uplink):
        await until(lambda: uplink.paused == "auth")
        fake.accept_credentials = True
        await drained(box)
    assert fake.counts == {"A": 1} and await box.dead_letters() == []


async def test_secrets_never_reach_the_logs(
    box: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeProdsmart(api_key="KEY-4c1d", api_secret="SECRET-9f3e")
    caplog.set_level(logging.DEBUG)
    uplink = Uplink(box, settings(auth="token"), Credentials("KEY-4c1d", "SECRET-9f3e"), Metrics(),
                    transport=fake.transport())
    httpx_logger = logging.getLogger("httpx")
    httpx_logger.setLevel(logging.DEBUG)  # even if someone turns httpx's request log on
    try:
        echo = "refused: POST http://prodsmart.test/x?access_token={} is wrong"
        await commit(box, CounterChanged("A", 1), stop("A"))
        async with running(uplink):
            await drained(box)
            fake.fail("A", httpx.Response(422, text=echo.format(fake.issued[-1])), httpx.Response(503))
            fake.expire_tokens()
            await commit(box, CounterChanged("A", 2), stop("A", True))
            uplink.wake()
            await drained(box)
    finally:
        httpx_logger.setLevel(logging.WARNING)
    assert len(fake.issued) == 2 and "access_token=***" in caplog.text
    (dead,) = await box.dead_letters()
    secrets = [*fake.issued, "KEY-4c1d", "SECRET-9f3e"]
    for secret in secrets:
        assert secret not in caplog.text
        assert secret not in dead.response
    assert "KEY-4c1d" not in repr(CREDS) + repr(Credentials("KEY-4c1d", "SECRET-9f3e"))
    assert redact("https://h/p?a=1&access_token=abc&b=2") == "https://h/p?a=1&access_token=***&b=2"


# ---------------------------------------------------------------- dry run and shutdown


async def test_dry_run_prints_the_calls_instead_of_sending(box: Outbox) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError("a dry run must not send anything")

    out = io.StringIO()
    uplink = Uplink(box, settings(), CREDS, Metrics(), transport=httpx.MockTransport(refuse),
                    dry_run=True, out=out)
    await commit(box, CounterChanged("A", 5), stop("A"), ParametersChanged("B", {"t": 1.5}))
    assert await uplink.drain(5)
    assert sorted(out.getvalue().splitlines()) == [  # one lane's order is kept; lanes run in parallel
        'POST /api/machines/A/counter {"count": 5}',
        'POST /api/machines/A/startstop {"type": "Stopped", "running": 0}',
        'POST /api/machines/B/parameters {"parameters": [{"code": "t", "value": 1.5}]}',
    ]
    assert await box.queued() == []


async def test_drain_sends_what_it_can_within_the_timeout(box: Outbox, fake: FakeProdsmart) -> None:
    await commit(box, CounterChanged("A", 5), stop("B"))
    uplink = make(box, fake)
    assert await uplink.drain(5)
    assert fake.counts == {"A": 5} and fake.running == {"B": 0}
    fake.accept_credentials = False
    await commit(box, CounterChanged("A", 6))
    started = time.monotonic()
    assert not await uplink.drain(0.3)
    assert time.monotonic() - started < 1
    assert [c.body for c in await box.queued()] == [{"count": 6}]


async def test_drain_while_running(box: Outbox, fake: FakeProdsmart) -> None:
    uplink = make(box, fake)
    async with running(uplink):
        await commit(box, CounterChanged("A", 5))
        assert await uplink.drain(5)
    assert fake.counts == {"A": 5}


# ---------------------------------------------------------------- against the sandbox server


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxOptions(api_key="key", api_secret="secret", requests_per_minute=0)) as server:
        yield server


def sandbox_uplink(box: Outbox, sandbox: Sandbox, **changes: Any) -> Uplink:
    extra = {k: changes.pop(k) for k in ("auth_retry",) if k in changes}
    return Uplink(box, settings(url=sandbox.url, **changes), CREDS, Metrics(), **extra)


async def produce(box: Outbox, uplink: Uplink, machines: list[str], rounds: int) -> dict[str, int]:
    """Counts and stops on every machine, committed while the uplink sends; returns the totals."""
    totals = dict.fromkeys(machines, 0)
    for r in range(rounds):
        events: list[Event] = []
        for i, m in enumerate(machines):
            totals[m] += i + 1
            events.append(CounterChanged(m, totals[m], {"Scrap": r + 1}))
            if r % 3 == 2:
                events.append(RunStateChanged(m, r % 2 == 1, "Maintenance"))
        await box.commit({}, events, now=time.time())
        uplink.wake()
        await asyncio.sleep(0.02)
    return totals


async def test_sandbox_faults_lose_nothing_and_count_nothing_twice(box: Outbox, sandbox: Sandbox) -> None:
    sandbox.inject(Fault("drop_after", endpoint="counter", machine="A"))  # applied, answer lost
    sandbox.inject(Fault("timeout", apply=True, delay=1.0, endpoint="counter", machine="B"))
    sandbox.inject(Fault("status", status=503, machine="C", count=2))
    sandbox.inject(Fault("drop_before", machine="D"))
    sandbox.inject(Fault("rate_limit", retry_after=1, machine="E"))
    uplink = sandbox_uplink(box, sandbox, timeout=0.4)
    async with running(uplink):
        totals = await produce(box, uplink, ["A", "B", "C", "D", "E", "F"], rounds=9)
        await drained(box, within=15)
    ledger = sandbox.ledger()
    assert {m: c["count"] for m, c in ledger.counters.items()} == totals
    assert all(c["waste"] == {"Scrap": 9} for c in ledger.counters.values())
    runs = {m: [r["running"] for r in changes] for m, changes in ledger.runs.items()}
    assert runs == {m: [0, 1, 0] for m in totals}
    assert len(ledger.faulted) == 6 and ledger.rejected and await box.dead_letters() == []


async def test_sandbox_tokens_are_renewed_when_they_expire(box: Outbox, sandbox: Sandbox) -> None:
    sandbox.set_options(token_ttl=0.3)
    uplink = sandbox_uplink(box, sandbox, auth="token")
    async with running(uplink):
        for total in range(1, 5):
            await box.commit({}, [CounterChanged("A", total)], now=time.time())
            uplink.wake()
            await drained(box)
            await asyncio.sleep(0.35)  # the token expires between calls
        assert uplink.paused is None
    ledger = sandbox.ledger()
    assert ledger.counters["A"]["count"] == 4
    assert [a["auth"] for a in ledger.accepted] == ["token"] * 4
    assert [a["method"] for a in ledger.authorizations][:2] == ["GET", "POST"]
    assert await box.dead_letters() == []


async def test_a_failed_token_request_never_marks_the_call_unknown(box: Outbox, sandbox: Sandbox) -> None:
    """Issue 10 item 9: the token request failed, the counter call never left; a genuine "not
    increasing" afterwards must stay a dead letter, not be swallowed as "already delivered"."""
    async with httpx.AsyncClient(base_url=sandbox.url, auth=("key", "secret")) as direct:
        assert (await direct.post("/api/machines/A/counter", json={"count": 10})).status_code == 200
    sandbox.inject(Fault("drop_before", endpoint="authorization", count=1))
    await box.commit({}, [CounterChanged("A", 5)], now=time.time())
    uplink = sandbox_uplink(box, sandbox, auth="token")
    async with running(uplink):
        await drained(box)
    assert len(sandbox.ledger().faulted) == 1
    (dead,) = await box.dead_letters()
    assert dead.status == 400 and "not greater" in dead.response
    assert sandbox.ledger().counters["A"]["count"] == 10


async def test_a_refused_parameter_does_not_take_the_count_with_it(box: Outbox, sandbox: Sandbox) -> None:
    """Issue 10 item 11: a 400 to a counter call that carries parameters sends the count again
    without them, and keeps the parameters alone as a dead letter."""
    sandbox.inject(Fault("status", status=400, endpoint="counter", machine="A", count=1))
    await box.commit({}, [ParametersChanged("A", {"temp": 21.5}), CounterChanged("A", 7)], now=time.time())
    async with running(sandbox_uplink(box, sandbox)):
        await drained(box)
    assert sandbox.ledger().counters["A"]["count"] == 7
    (dead,) = await box.dead_letters()
    assert (dead.kind, dict(dead.body), dead.status) == (
        "parameters", {"parameters": [{"code": "temp", "value": 21.5}]}, 400)
    assert await box.pending_parameters("A") == {}
    # Retried later, the parameter goes to the parameters endpoint.
    assert await box.retry_dead_letter(dead.id)
    async with running(sandbox_uplink(box, sandbox)):
        await drained(box)
    assert sandbox.ledger().parameters["A"] == {"temp": 21.5}


async def test_one_machines_403_pauses_only_that_machine(
    box: Outbox, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10 item 12: a machine the API key may not use waits alone, with an alert naming it."""
    sandbox.inject(Fault("status", status=403, machine="B", count=-1))
    await box.commit({}, [CounterChanged(m, 1) for m in "ABC"], now=time.time())
    uplink = sandbox_uplink(box, sandbox, auth_retry=30.0)
    async with running(uplink):
        await until(lambda: any(r["status"] == 403 for r in sandbox.ledger().rejected))
        await box.commit({}, [CounterChanged("A", 2), CounterChanged("C", 2)], now=time.time())
        uplink.wake()
        await until(lambda: {m: c.get("count") for m, c in sandbox.ledger().counters.items()}
                    == {"A": 2, "C": 2}, within=10.0)
        assert uplink.paused is None and uplink.forbidden == ["B"]
        deadline = time.monotonic() + 5.0
        while [c.machine for c in await box.queued()] != ["B"]:  # the last acks are being written
            assert time.monotonic() < deadline, await box.queued()
            await asyncio.sleep(0.01)
    alerts = [r for r in caplog.records if r.levelno == logging.ERROR and "403" in r.getMessage()]
    assert len(alerts) == 1 and "B" in alerts[0].getMessage()
    assert await box.dead_letters() == []


@pytest.mark.parametrize("where", ["token request", "every machine"])
async def test_credentials_refused_everywhere_still_pause_everything(
    box: Outbox, sandbox: Sandbox, where: str
) -> None:
    if where == "token request":
        sandbox.inject(Fault("status", status=403, endpoint="authorization", count=-1))
    else:  # the key may use no machine at all: that is the credentials, not one machine
        sandbox.inject(Fault("status", status=403, count=-1))
    await box.commit({}, [CounterChanged(m, 1) for m in "ABC"], now=time.time())
    uplink = sandbox_uplink(box, sandbox, auth="token" if where == "token request" else "basic",
                            auth_retry=30.0)
    async with running(uplink):
        await until(lambda: uplink.paused == "auth")
        await asyncio.sleep(0.3)
    assert len(await box.queued()) == 3
    assert len(sandbox.ledger().rejected) <= 3
