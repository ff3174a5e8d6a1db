"""Pauses of every lane: a 429 (until Retry-After, shared through the budget) and refused credentials.

Inherited by `agent.uplink.client.Uplink`; what they use of it is declared for the type checker.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from agent.core.metrics import Metrics
    from agent.uplink.budget import Budget

# The module these methods came from, so log lines (and the tests' log filters) read as they did.
log = logging.getLogger("agent.uplink.client")

DEFAULT_RETRY_AFTER = 60.0
MAX_RETRY_AFTER = 3600.0  # a bogus Retry-After must not silence the agent for days


def parse_retry_after(value: str | None, now: float | None = None) -> float:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date; missing: 60 s."""
    if value is None or not value.strip():
        return DEFAULT_RETRY_AFTER
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(MAX_RETRY_AFTER, max(1.0, seconds))


@dataclass
class Pause:
    reason: str | None = None
    until: float = 0.0


class Pauses:
    """Every lane waits: for Retry-After after a 429, or for the credentials to work again."""

    if TYPE_CHECKING:
        _pause: Pause
        _metrics: Metrics
        _budget: Budget
        _clock: Callable[[], float]

    @property
    def paused(self) -> str | None:
        """"rate_limited" or "auth" while every lane waits, else None."""
        reason = self._pause.reason
        if reason == "rate_limited" and self._clock() >= self._pause.until:
            return None
        return reason

    @property
    def pause_left(self) -> float:
        """Seconds every lane still waits (0 when not paused)."""
        return max(0.0, self._pause.until - self._clock()) if self._pause.reason else 0.0

    def _pause_left(self) -> float:
        left = self._pause.until - self._clock()
        if left <= 0 and self._pause.reason == "rate_limited":
            # The wait is over; the episode (logged once) ends with the next answer that is not a 429.
            self._metrics.uplink_paused.labels("rate_limited").set(0)
        return max(0.0, left)

    async def _rate_limited(self, response: httpx.Response) -> None:
        seconds = parse_retry_after(response.headers.get("Retry-After"))
        await self._budget.block(seconds)  # with a shared budget: every agent of the company waits
        first = self._pause.reason != "rate_limited"
        self._metrics.rate_limited.inc()
        self._start_pause("rate_limited", seconds)
        log.log(logging.WARNING if first else logging.DEBUG,
                "Prodsmart's rate limit is reached (HTTP 429): every machine waits %.0f s", seconds)

    def _start_pause(self, reason: str, seconds: float) -> None:
        if self._pause.reason is not None and self._pause.reason != reason:
            self._metrics.uplink_paused.labels(self._pause.reason).set(0)
        self._pause.reason = reason
        self._pause.until = max(self._pause.until, self._clock() + seconds) if reason == "rate_limited" \
            else self._clock() + seconds
        self._metrics.uplink_paused.labels(reason).set(1)

    def _end_pause(self, reason: str, message: str) -> None:
        if self._pause.reason != reason:
            return
        self._pause.reason = None
        self._metrics.uplink_paused.labels(reason).set(0)
        log.info(message)
