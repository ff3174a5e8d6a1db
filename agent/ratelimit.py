"""A token bucket shared by every machine lane, so the agent stays under Prodsmart's company-wide limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """`rate_per_minute` tokens a minute, at most `burst` saved up.

    A small burst keeps a single stop/start pair snappy while the long-run rate stays at the
    configured figure: in any window of t seconds at most `burst + rate * t` requests go out.
    The bucket starts with one token only, so a restart does not open with a burst.
    """

    def __init__(
        self, rate_per_minute: float, burst: int = 2, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_minute <= 0 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self._clock = clock
        self._tokens = 1.0
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay(self) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill()
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate

    def try_take(self) -> bool:
        """Take a token if one is available now."""
        if self.delay() > 0:
            return False
        self._tokens -= 1.0
        return True

    async def take(self) -> None:
        """Wait for a token and take it."""
        while not self.try_take():  # noqa: ASYNC110 - waiting for time to pass, not for an event
            await asyncio.sleep(self.delay())

    def empty(self) -> None:
        """Spend what is saved up (after a 429: the server's count is full, start again slowly)."""
        self._refill()
        self._tokens = min(self._tokens, 0.0)
