"""The request budget the uplink spends: this agent's own token bucket, or a company's shared one.

A budget hands out one request at a time (`acquire`), takes back a request that was not sent
after all (`refund`: a token is never spent on a call that does not leave this machine), and
hears about 429 answers (`block`). `LocalBudget` is the agent's own token bucket;
`agent.uplink.shared.SharedBudget` shares the company's requests a minute between agents through
Redis and falls back to a `LocalBudget` share while Redis cannot be reached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.config.sections import ProdsmartSection
from agent.core.errors import PlainError
from agent.core.metrics import Metrics
from agent.uplink.ratelimit import TokenBucket


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to a request for budget: `wait` 0 means one request was taken; otherwise
    how long to wait before asking again. `blocked`: the company is past Prodsmart's limit (a
    429 seen by this or another agent), every agent waits until its Retry-After."""

    wait: float = 0.0
    blocked: bool = False

    @property
    def granted(self) -> bool:
        return self.wait <= 0.0


class Budget(Protocol):
    """What the uplink needs of a budget (local or shared)."""

    async def acquire(self, *, spare: bool = False, age: float | None = None) -> Grant:
        """Take one request now if possible; `spare`: only if nobody else needs it (parameters);
        `age`: how long the call has been due (its oldest part's age), so a shared budget serves
        the agent with the stalest machine first."""
        ...

    async def refund(self) -> None:
        """Give back a request taken for a call that was not sent."""
        ...

    async def block(self, seconds: float) -> None:
        """Prodsmart answered 429: nobody may send for `seconds`, and the budget starts empty."""
        ...

    async def keepalive(self) -> None:
        """Called about every second: a shared budget keeps in touch, or retries a lost Redis."""
        ...

    def describe(self) -> dict[str, object]:
        """For /status: mode ("local", "shared" or "fallback"), requests a minute, agents seen."""
        ...

    async def close(self) -> None: ...


async def take(budget: Budget) -> None:
    """Wait until the budget grants one request (access-token requests count too)."""
    while not (grant := await budget.acquire()).granted:  # noqa: ASYNC110 - waiting for time to pass
        await asyncio.sleep(grant.wait)


class LocalBudget:
    """This agent's own token bucket: `per_minute` requests in any 60 s window."""

    def __init__(self, per_minute: float, metrics: Metrics | None = None, *, burst: int = 2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._bucket = TokenBucket(per_minute, burst, clock)
        self._clock = clock
        self._blocked_until = 0.0
        self._metrics = metrics
        if metrics is not None:
            metrics.budget_per_minute.set(per_minute)

    async def acquire(self, *, spare: bool = False, age: float | None = None) -> Grant:
        return self.acquire_now(spare=spare)

    def acquire_now(self, *, spare: bool = False) -> Grant:
        blocked = self._blocked_until - self._clock()
        if blocked > 0:
            return Grant(blocked, blocked=True)
        if self._bucket.try_take(spare):
            return Grant()
        return Grant(self._bucket.delay(spare))

    async def refund(self) -> None:
        self.refund_now()

    def refund_now(self) -> None:
        self._bucket.give_back()
        if self._metrics is not None:
            self._metrics.budget_refunds.inc()

    async def block(self, seconds: float) -> None:
        self.block_now(seconds)

    def block_now(self, seconds: float) -> None:
        self._bucket.empty()
        self._blocked_until = max(self._blocked_until, self._clock() + seconds)

    async def keepalive(self) -> None:
        return None

    def describe(self) -> dict[str, object]:
        return {"mode": "local", "requests_per_minute": self.per_minute}

    async def close(self) -> None:
        return None


class BudgetUnavailable(PlainError):
    """The configured shared budget cannot be used (the optional `redis` package is missing)."""


def open_budget(settings: ProdsmartSection, metrics: Metrics, agent_id: str,
                username: str | None = None, password: str | None = None) -> Budget:
    """The budget the configuration asks for: shared through Redis (`budget:`), else local."""
    if settings.budget is None:
        return LocalBudget(settings.requests_per_minute, metrics)
    try:  # the optional `redis` extra, imported only when a shared budget is configured
        from agent.uplink.shared import RedisAccess, SharedBudget
    except ImportError as exc:
        raise BudgetUnavailable(
            "The shared request budget (prodsmart.budget) needs the redis package: "
            f"pip install 'prodsmart-edge[redis]' ({exc})") from None
    access = RedisAccess(settings.budget, username, password)
    return SharedBudget(settings.requests_per_minute, access, agent_id, metrics)
