"""Access tokens and the per-company rate limit; callers hold the lock and pass monotonic time."""

from __future__ import annotations

import email.utils
import math
import secrets
import time
from collections import deque
from dataclasses import dataclass

from agent.sandbox.calls import Refused

WINDOW = 60.0


@dataclass(frozen=True)
class Token:
    value: str
    scopes: tuple[str, ...]
    expires: float


class TokenStore:
    """The company's access tokens, newest last."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}

    def current(self, now: float) -> Token | None:
        self._expire(now)
        return next(reversed(self._tokens.values()), None)

    def create(self, scopes: list[str], ttl: float, now: float, replace: bool) -> Token:
        if replace:
            self._tokens.clear()
        token = Token(secrets.token_hex(16), tuple(scopes), now + ttl)
        self._tokens[token.value] = token
        return token

    def delete(self) -> None:
        self._tokens.clear()

    def holds(self, value: str) -> bool:
        return value in self._tokens

    def check(self, value: str, now: float) -> Token:
        token = self._tokens.get(value)
        if token is None:
            raise Refused(401, "the access token is unknown or was deleted")
        if now >= token.expires:
            del self._tokens[value]
            raise Refused(401, "the access token has expired; request a new one")
        return token

    def _expire(self, now: float) -> None:
        for value in [v for v, t in self._tokens.items() if now >= t.expires]:
            del self._tokens[value]


class RateWindow:
    """A sliding 60 s window of admitted requests, the company's other integrations' included."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        self._next_other: float | None = None
        self.others = {"admitted": 0, "refused": 0}

    def admit(self, limit: int, now: float, others_per_minute: float = 0.0) -> float | None:
        """None if the request is admitted (and counted), else the seconds until one would be."""
        self._others(limit, now, others_per_minute)
        self._prune(now)
        if limit and len(self._times) >= limit:
            return self._times[len(self._times) - limit] + WINDOW - now
        self._times.append(now)
        return None

    def _others(self, limit: int, now: float, per_minute: float) -> None:
        """The other integrations' requests due by `now`, evenly spaced from the first request on."""
        if per_minute <= 0:
            self._next_other = None
            return
        if self._next_other is None:
            self._next_other = now
        while self._next_other <= now:
            at = self._next_other
            self._prune(at)
            if limit and len(self._times) >= limit:
                self.others["refused"] += 1
            else:
                self._times.append(at)
                self.others["admitted"] += 1
            self._next_other = at + WINDOW / per_minute

    def _prune(self, now: float) -> None:
        while self._times and self._times[0] <= now - WINDOW:
            self._times.popleft()

    def clear(self) -> None:
        self._times.clear()
        self._next_other = None
        self.others = {"admitted": 0, "refused": 0}


def retry_after(seconds: float, fmt: str) -> str:
    """A Retry-After value, rounded up so that a client honouring it is never early."""
    whole = max(0, math.ceil(seconds))
    if fmt == "http-date":
        return email.utils.formatdate(math.ceil(time.time()) + whole, usegmt=True)
    return str(whole)


def too_many(seconds: float, fmt: str, reason: str) -> Refused:
    return Refused(429, reason, (("Retry-After", retry_after(seconds, fmt)),))
