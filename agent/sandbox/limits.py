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
    """A sliding 60 s window of admitted requests."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def admit(self, limit: int, now: float) -> float | None:
        """None if the request is admitted (and counted), else the seconds until one would be."""
        while self._times and self._times[0] <= now - WINDOW:
            self._times.popleft()
        if limit and len(self._times) >= limit:
            return self._times[len(self._times) - limit] + WINDOW - now
        self._times.append(now)
        return None

    def clear(self) -> None:
        self._times.clear()


def retry_after(seconds: float, fmt: str) -> str:
    """A Retry-After value, rounded up so that a client honouring it is never early."""
    whole = max(0, math.ceil(seconds))
    if fmt == "http-date":
        return email.utils.formatdate(math.ceil(time.time()) + whole, usegmt=True)
    return str(whole)


def too_many(seconds: float, fmt: str, reason: str) -> Refused:
    return Refused(429, reason, (("Retry-After", retry_after(seconds, fmt)),))
