"""Round robin by lag: the machine with the oldest unsent part goes first; stops first, within reason."""

from __future__ import annotations

import asyncio
import random
import time

import httpx

from agent.config.sections import ProdsmartSection
from agent.core.metrics import Metrics
from agent.core.model import CounterChanged, ParametersChanged, RunStateChanged
from agent.outbox.store import Head, Outbox
from agent.uplink.budget import Grant, LocalBudget
from agent.uplink.client import Uplink
from agent.uplink.scheduler import STARTSTOP_LEAD, Scheduler
from tests.support.fixtures_prodsmart import FakeProdsmart
from tests.uplink.test_client import CREDS, commit, drained, fake, make, running, sample, settings

__all__ = ["fake"]  # the fixture


def scheduler() -> Scheduler:
    return Scheduler(ProdsmartSection(), random.Random(1))


def counter(machine: str, oldest: float) -> Head:
    return Head(machine, "counter", 1, oldest, oldest)


def test_the_counter_head_with_the_oldest_part_goes_first() -> None:
    heads = [counter("A", 100.0), counter("B", 40.0), counter("C", 70.0)]
    head, _ = scheduler().choose(heads, set(), now=200.0)
    assert head is not None and head.machine == "B"


def test_a_startstop_overtakes_counts_but_not_by_more_than_the_lead() -> None:
    stop = Head("S", "startstop", 2, 1000.0, None)
    younger = counter("C", 1000.0 - STARTSTOP_LEAD / 2)
    much_older = counter("C", 1000.0 - STARTSTOP_LEAD * 2)
    assert scheduler().choose([younger, stop], set(), now=1001.0)[0] == stop
    assert scheduler().choose([much_older, stop], set(), now=1001.0)[0] == much_older


def test_parameters_come_last_whatever_their_age() -> None:
    params = Head("P", "parameters", 0, 1.0, None)
    head, _ = scheduler().choose([params, counter("C", 500.0)], set(), now=600.0)
    assert head is not None and head.machine == "C"
    head, _ = scheduler().choose([params, counter("C", 500.0)], {"C"}, now=600.0)
    assert head == params


def test_a_clock_stepped_back_does_not_starve_the_backlog() -> None:
    """Calls carry wall-clock stamps; after NTP steps the clock back an hour, a new count must
    not look an hour older than the backlog (by wall stamps alone, A would win again and again)."""
    wall = [1000.0]
    s = Scheduler(ProdsmartSection(), random.Random(1), wall=lambda: wall[0])
    a, b = counter("A", 990.0), counter("B", 995.0)
    assert s.choose([a, b], set(), now=50.0)[0] == a
    wall[0] = 1001.0 - 3600
    newer = counter("A", wall[0])  # A's next part, stamped by the stepped clock
    assert s.choose([newer, b], set(), now=51.0)[0] == b
    assert s.age(b, now=51.0) == 6.0 and s.age(newer, now=51.0) == 0.0


def test_a_lane_in_backoff_is_skipped_and_its_end_reported() -> None:
    s = scheduler()
    s.lane("A").until = 105.0
    head, wait = s.choose([counter("A", 1.0)], set(), now=100.0)
    assert head is None and wait == 5.0


async def test_the_uplink_serves_the_stalest_machine_first(box: Outbox, fake: FakeProdsmart) -> None:
    """On the old code lanes took turns by name (A first); by lag, B's older count goes first."""
    now = time.time()
    await box.commit({}, [CounterChanged("B", 1)], now=now - 50)
    await box.commit({}, [CounterChanged("C", 1)], now=now - 20)
    await box.commit({}, [CounterChanged("A", 1)], now=now - 5)
    async with running(make(box, fake, concurrency=1)):
        await drained(box)
    assert [m for m, _, _ in fake.applied] == ["B", "C", "A"]


async def test_lag_is_measured_per_machine_and_at_delivery(box: Outbox, fake: FakeProdsmart) -> None:
    metrics = Metrics()
    box._metrics = metrics  # the service opens the outbox with the agent's metrics
    now = time.time()
    await box.commit({}, [CounterChanged("A", 1)], now=now - 30)
    await box.commit({}, [CounterChanged("A", 2), RunStateChanged("B", False, "Stopped")], now=now - 10)
    stats = {s.machine: s for s in await box.stats(now)}
    assert abs(stats["A"].count_lag - 30) < 0.01  # the oldest part, not the newest
    assert stats["B"].count_lag == 0.0  # a stop is not a part
    assert sample(metrics, "count_lag_seconds", machine="A") == stats["A"].count_lag
    async with running(make(box, fake, metrics)):
        await drained(box)
    assert sample(metrics, "count_lag_at_delivery_seconds_count") == 1
    assert 30 <= sample(metrics, "count_lag_at_delivery_seconds_sum") < 40
    assert [s.count_lag for s in await box.stats(time.time())] == [0.0, 0.0]


async def test_a_request_is_not_spent_on_a_call_that_never_left(box: Outbox, fake: FakeProdsmart) -> None:
    """At 2 requests a minute a spent request costs 30 s; refused connections must cost none.
    On the old code the retry after the refused connection waited for the next token."""
    fake.fail("A", httpx.ConnectError("connection refused"), httpx.ConnectError("connection refused"))
    await commit(box, CounterChanged("A", 1))
    metrics = Metrics()
    uplink = Uplink(box, settings(requests_per_minute=2), CREDS, metrics, transport=fake.transport())
    async with running(uplink):
        await drained(box, within=5.0)
    assert [m for m, _, _ in fake.applied] == ["A"]
    assert sample(metrics, "budget_refunds_total") == 2



async def test_a_request_is_not_spent_on_a_head_that_vanished(box: Outbox, fake: FakeProdsmart) -> None:
    """A parameters call is chosen, and while its request is being taken a counter call is
    committed for that machine: the parameters ride on it, nothing is sent for the parameters
    head, and its request goes back to the budget."""

    class CountCommittedMeanwhile(LocalBudget):
        async def acquire(self, *, spare: bool = False, age: float | None = None) -> Grant:
            if spare and not box_has_counts:
                box_has_counts.append(True)
                await commit(box, CounterChanged("P", 7))
            return await super().acquire(spare=spare, age=age)

    box_has_counts: list[bool] = []
    metrics = Metrics()
    await commit(box, ParametersChanged("P", {"t": 21}))
    budget = CountCommittedMeanwhile(6000, metrics)
    uplink = Uplink(box, settings(), CREDS, metrics, transport=fake.transport(), budget=budget)
    await asyncio.sleep(0.05)  # the bucket fills: the parameters find spare budget
    async with running(uplink):
        await drained(box)
    assert fake.applied == [("P", "counter", {"count": 7, "parameters": [{"name": "t", "value": 21}]})]
    assert sample(metrics, "budget_refunds_total") == 1
