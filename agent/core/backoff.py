"""Exponential backoff with full jitter, for every loop that waits on something that failed."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Delays of base * 2^n, capped, each drawn uniformly from [cap/2, cap] (jitter).

    Half-jitter rather than full jitter: a retry never comes sooner than half the nominal
    delay, so a dead server is not flooded, and clients that failed together spread out.
    """

    def __init__(self, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The delay before the next attempt; each call lengthens the following one."""
        nominal = min(self.cap, self.base * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return self._rng.uniform(nominal / 2, nominal)

    def reset(self) -> None:
        """Back to the shortest delay, after a success."""
        self.attempts = 0

    async def sleep(self) -> float:
        """Sleep for the next delay and return it."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay
