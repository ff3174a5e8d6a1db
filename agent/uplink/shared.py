"""A company's requests a minute shared by all its agents through Redis (or Valkey), with a fallback.

Prodsmart counts 120 requests a minute per company, for every integration together, so
several agents of one company draw from one token bucket kept in Redis. Each operation is one
Lua script (atomic on the server, timed by the server's clock so the agents' clocks do not
matter); the keys carry the company as a hash tag so a Redis Cluster keeps them together:
- `<prefix>:{company}:bucket`: the token bucket (tokens, stamp), the same shape as
  `agent.uplink.ratelimit.TokenBucket`: never more than `requests_per_minute` in any 60 s;
- `<prefix>:{company}:blocked`: until when every agent waits after a 429 one of them got;
- `<prefix>:{company}:agents` / `:weights`: the agents seen in the last `SEEN_FOR` seconds;
- `<prefix>:{company}:claims`: for each agent waiting for a request, when its most urgent call
  became due (Redis's time minus the call's age). A free request goes to the agent whose claim is
  oldest, so the company's machines are served by lag across agents, not only within each; a
  claim not renewed within two request intervals lapses (its agent died or has nothing left).
  An agent's `weight` stretches its lags in that comparison (weight 2: its machines count as
  twice as stale), and sets its part of the fallback share.

If Redis cannot be reached, this agent falls back to a static share (the configured one, else
its weight's share of the budget among the agents it last saw), logs it once, exports it
(`prodsmart_edge_budget_shared` 0) and tries Redis again every few seconds; the shared bucket
takes over again as soon as Redis answers. The `redis` package is an optional extra, imported
only when a budget is configured.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from agent.config.sections import BudgetSection
from agent.core.metrics import Metrics
from agent.uplink.budget import Grant, LocalBudget
from agent.uplink.budget_lua import BLOCK, REFUND, TAKE
from agent.uplink.ratelimit import TokenBucket

log = logging.getLogger(__name__)

SEEN_FOR = 60.0  # seconds an agent counts as present after its last contact
KEEPALIVE = 10.0  # seconds between contacts of an idle agent, so the others keep counting it
RETRY_REDIS = 2.0  # seconds between attempts to reach Redis again while on the fallback share
UNKNOWN_SHARE = 4  # agents assumed when Redis was never reached since the start

DOWN = (RedisError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class RedisAccess:
    """Where and how to reach Redis; the secrets come from `agent.config.secrets.redis_secrets`."""

    settings: BudgetSection
    username: str | None = None
    password: str | None = None


class SharedBudget:
    """The company's bucket in Redis; a `LocalBudget` share while Redis cannot be reached."""

    def __init__(self, per_minute: float, access: RedisAccess, agent_id: str, metrics: Metrics,
                 *, burst: int = 2, rng: random.Random | None = None) -> None:
        cfg = access.settings
        self.per_minute = per_minute
        self._cfg = cfg
        self._agent = agent_id
        self._metrics = metrics
        self._rng = rng or random.Random()
        shape = TokenBucket(per_minute, burst)
        self._args = (repr(shape.rate), repr(shape.burst))
        self._burst = burst
        base = f"{cfg.key_prefix}:{{{cfg.company}}}"
        self._keys = [f"{base}:{name}" for name in ("bucket", "blocked", "agents", "weights", "claims")]
        self._redis = _connect(access)
        self._take = self._redis.register_script(TAKE)
        self._refund = self._redis.register_script(REFUND)
        self._block = self._redis.register_script(BLOCK)
        self._fallback: LocalBudget | None = None
        self._agents: int | None = None
        self._total_weight: float | None = None
        self._next_try = 0.0
        self._last_contact = 0.0
        self._disagreed = False
        self._where = _where(cfg.redis)
        metrics.budget_shared.set(1)
        metrics.budget_per_minute.set(per_minute)

    # ------------------------------------------------------------------ Budget

    async def acquire(self, *, spare: bool = False, age: float | None = None) -> Grant:
        if self._fallback is not None:  # `keepalive` tries Redis again, never a call's wait
            return self._fallback.acquire_now(spare=spare)
        claim = "" if age is None or spare else repr(max(0.0, age) * self._cfg.weight)
        args = [*self._args, "1" if spare else "0", self._agent, repr(self._cfg.weight), SEEN_FOR, claim,
                repr(self.per_minute)]
        reply = await self._script(self._take, self._keys, args)
        if reply is None:
            assert self._fallback is not None
            return self._fallback.acquire_now(spare=spare)
        granted, wait, blocked = int(reply[0]), float(reply[1]), int(reply[2])
        return Grant() if granted else Grant(max(wait, 0.001), blocked=bool(blocked))

    async def refund(self) -> None:
        self._metrics.budget_refunds.inc()
        if self._fallback is not None:
            self._fallback.refund_now()
            return
        if await self._script(self._refund, self._keys[:1], list(self._args)) is None:
            assert self._fallback is not None
            self._fallback.refund_now()

    async def block(self, seconds: float) -> None:
        if self._fallback is not None:
            self._fallback.block_now(seconds)
        if await self._script(self._block, self._keys[:2], [*self._args, repr(seconds)]) is None:
            assert self._fallback is not None
            self._fallback.block_now(seconds)

    async def keepalive(self) -> None:
        """Tell the others this agent is still here (idle agents count), and retry a lost Redis;
        the uplink calls it about every second."""
        now = time.monotonic()
        due = self._next_try if self._fallback is not None else self._last_contact + KEEPALIVE
        if now >= due:
            await self._script(self._take, self._keys, [*self._args, "keepalive", self._agent,
                                                        repr(self._cfg.weight), SEEN_FOR, "",
                                                        repr(self.per_minute)])

    def describe(self) -> dict[str, object]:
        shared = self._fallback is None
        return {"mode": "shared" if shared else "fallback", "redis": self._where,
                "company": self._cfg.company, "weight": self._cfg.weight,
                "requests_per_minute": self.per_minute if shared else self._fallback_rate(),
                "company_requests_per_minute": self.per_minute, "agents": self._agents}

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except DOWN:
            pass

    # ------------------------------------------------------------------ Redis and the fallback

    async def _script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a script; None (and the fallback share in force) if Redis cannot be reached."""
        try:
            async with asyncio.timeout(self._cfg.timeout * 2):
                reply = await script(keys=keys, args=args)
        except DOWN as exc:
            self._fall_back(exc)
            return None
        self._last_contact = time.monotonic()
        if isinstance(reply, list) and len(reply) == 6:
            self._agents, self._total_weight = int(reply[3]), float(reply[4])
            if reply[5] and not self._disagreed:
                self._disagreed = True
                log.warning("Agents of company %s disagree on prodsmart.requests_per_minute: this one has "
                            "%g, another %s; the shared bucket follows whichever asks last. Set the same "
                            "value on every agent of the company", self._cfg.company, self.per_minute,
                            reply[5])
        self._shared_again()
        return reply

    def _fallback_rate(self) -> float:
        if self._cfg.fallback_per_minute is not None:
            return min(self._cfg.fallback_per_minute, self.per_minute)
        if not self._total_weight:
            return self.per_minute / UNKNOWN_SHARE
        return self.per_minute * min(1.0, self._cfg.weight / self._total_weight)

    def _fall_back(self, exc: BaseException) -> None:
        self._next_try = time.monotonic() + RETRY_REDIS * self._rng.uniform(0.5, 1.0)
        if self._fallback is not None:
            log.debug("Redis at %s still cannot be reached: %s", self._where, _detail(exc))
            return
        rate = self._fallback_rate()
        self._fallback = LocalBudget(rate, burst=self._burst)
        self._metrics.budget_shared.set(0)
        self._metrics.budget_fallbacks.inc()
        self._metrics.budget_per_minute.set(rate)
        seen = "its configured share" if self._cfg.fallback_per_minute is not None else (
            f"an even share for {self._agents} agent(s) last seen" if self._total_weight
            else f"a 1/{UNKNOWN_SHARE} share (it never reached Redis)")
        log.warning("Cannot reach Redis at %s for the shared request budget (%s): this agent now sends "
                    "at most %.1f requests a minute, %s, until Redis is back", self._where, _detail(exc),
                    rate, seen)

    def _shared_again(self) -> None:
        if self._fallback is None:
            return
        self._fallback = None
        self._metrics.budget_shared.set(1)
        self._metrics.budget_per_minute.set(self.per_minute)
        log.info("Redis at %s answers again: the company's request budget is shared again", self._where)


def _connect(access: RedisAccess) -> aioredis.Redis:
    cfg = access.settings
    extra: dict[str, Any] = {}
    if cfg.redis.startswith("rediss://") and cfg.tls_ca_file:
        extra["ssl_ca_certs"] = cfg.tls_ca_file
    # No retries inside redis-py: a lost Redis must turn into the fallback share at once.
    return aioredis.Redis.from_url(
        cfg.redis, username=access.username, password=access.password, socket_timeout=cfg.timeout,
        socket_connect_timeout=cfg.timeout, retry=Retry(NoBackoff(), 0), decode_responses=True, **extra)


def _where(url: str) -> str:
    """The URL without path or query (no credentials can be in it: the config refuses them)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0] if scheme != 'unix' else rest.split('?', 1)[0]}"


def _detail(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
