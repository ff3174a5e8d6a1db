"""A token bucket shared by every machine lane, so the agent stays under Prodsmart's company-wide limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

WINDOW = 60.0  # Prodsmart counts requests per minute


class TokenBucket:
    """At most `per_minute` requests in any 60-second window, with a small burst.

    A bucket holding up to `burst` tokens allows `burst + rate * 60` requests in a window that
    starts with a full bucket, so it refills at (per_minute - burst) a minute: a stop/start pair
    goes out at once, and Prodsmart's sliding count never sees more than `per_minute`.
    It starts with one token, so a restart does not open with a burst.
    """

    def __init__(
        self, per_minute: float, burst: int = 2, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("the rate and the burst must be positive")
        self.burst = float(burst if per_minute >= 2 * burst else 1)
        self.rate = max(per_minute - self.burst, per_minute / 2) / WINDOW  # tokens per second
        self._clock = clock
        self._tokens = 1.0
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay(self, spare: bool = False) -> float:
        """Seconds until a token is available (0 if one is); `spare`: until the bucket is full,
        i.e. nothing else wants the budget (parameters go only in spare budget)."""
        self._refill()
        need = self.burst if spare else 1.0
        return 0.0 if self._tokens >= need else (need - self._tokens) / self.rate

    def try_take(self, spare: bool = False) -> bool:
        """Take a token if one is available now (`spare`: only if the bucket is full)."""
        if self.delay(spare) > 0:
            return False
        self._tokens -= 1.0
        return True

    def give_back(self) -> None:
        """Return a token taken for a call that was not sent after all."""
        self._refill()
        self._tokens = min(self.burst, self._tokens + 1.0)

    async def take(self) -> None:
        """Wait for a token and take it."""
        while not self.try_take():  # noqa: ASYNC110 - waiting for time to pass, not for an event
            await asyncio.sleep(self.delay())

    def empty(self) -> None:
        """Spend what is saved up (after a 429: the server's count is full, start again slowly)."""
        self._refill()
        self._tokens = min(self._tokens, 0.0)
