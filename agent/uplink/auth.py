"""Prodsmart authentication (HTTP Basic or an access token renewed before expiry and on 401) and redaction.

`TokenAuth` is an `httpx.Auth`: it gets the token with `GET /api/authorization` (creating one
with `POST` if there is none), adds it as the `access_token` query parameter, renews it at
~1 h 50 (tokens live 2 h) and once on a 401. Renewing deletes the old token first, because
Prodsmart documents that GET returns the *existing* token, which may be the stale one. A
failing token request ends the flow with that response, so the caller sees the real status.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

TOKEN_RENEW_AFTER = 110 * 60.0  # a token lives 2 h: renew with ten minutes to spare
_SECRET_PARAM = re.compile(r"(access_token=)[^&\s\"'#]+", re.IGNORECASE)


@dataclass(frozen=True)
class Credentials:
    """The Prodsmart API key and secret; never shown by repr."""

    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.api_key}:{self.api_secret}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def redact(text: object) -> str:
    """The text with any access token replaced (URLs carry it as a query parameter)."""
    return _SECRET_PARAM.sub(r"\1***", str(text))


class RedactingFilter(logging.Filter):
    """Rewrites records of a logger (httpx logs request URLs) so that no token reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def protect_http_loggers() -> None:
    """Keep httpx/httpcore request logs (URLs with the token) out of INFO, and redact them anyway."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


@dataclass
class _Fetch:
    failure: httpx.Response | None = None


def _token_of(response: httpx.Response) -> str | None:
    try:
        data: Any = response.json()
    except ValueError:
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) and token else None


class TokenAuth(httpx.Auth):
    """Access-token authentication for an `httpx.AsyncClient` (one token shared by all requests)."""

    # async_auth_flow is overridden, so the base class's body reading does not apply:
    # token responses are read explicitly below.

    def __init__(
        self,
        credentials: Credentials,
        url: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        renew_after: float = TOKEN_RENEW_AFTER,
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._credentials = credentials
        self._url = url  # absolute: requests made inside an auth flow skip the client's base_url
        self._clock = clock
        self._renew_after = renew_after
        self._pace = pace  # the rate limiter: token requests count against the company limit too
        self._token: str | None = None
        self._fetched_at = 0.0
        self._generation = 0
        self._leader: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"TokenAuth(url={self._url!r})"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("TokenAuth works with httpx.AsyncClient only")

    def _stale(self) -> bool:
        return self._token is None or self._clock() - self._fetched_at >= self._renew_after

    def _authorize(self, request: httpx.Request) -> httpx.Request:
        request.url = request.url.copy_set_param("access_token", self._token or "")
        return request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        renew = False
        used = self._generation  # the token generation the last attempt carried
        for _ in range(2):
            if renew or self._stale():
                while self._leader is not None:  # another request is fetching: share its token
                    await asyncio.shield(self._leader)
                if self._stale() or (renew and self._generation == used):
                    fetch = _Fetch()
                    leader = self._leader = asyncio.get_running_loop().create_future()
                    try:
                        steps = self._fetch_steps(fetch, renew=self._token is not None)
                        try:
                            step = await steps.__anext__()
                            while True:
                                answer = yield step
                                await answer.aread()
                                step = await steps.asend(answer)
                        except StopAsyncIteration:
                            pass
                    finally:
                        leader.set_result(None)
                        self._leader = None
                    if fetch.failure is not None:
                        return  # httpx hands the failing token response to the caller
            used = self._generation
            response = yield self._authorize(request)
            if response.status_code != 401 or renew:
                return
            log.debug("Prodsmart answered 401 with the access token: getting a new token once")
            renew = True

    def _request(self, method: str, body: Any = None) -> httpx.Request:
        return httpx.Request(method, self._url, json=body,
                             headers={"Authorization": self._credentials.basic_header()})

    async def _fetch_steps(
        self, fetch: _Fetch, *, renew: bool
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """GET the existing token, POST a new one if there is none; to renew, DELETE the old first."""
        if renew:
            response = yield await self._send(self._request("DELETE"))
            if response.status_code not in (200, 202, 204, 404):
                fetch.failure = response
                return
        else:
            response = yield await self._send(self._request("GET"))
            token = _token_of(response) if response.is_success else None
            if token is not None:
                self._keep(token)
                return
            if response.status_code in (401, 403, 429) or response.status_code >= 500:
                fetch.failure = response
                return
        response = yield await self._send(self._request("POST", {"scopes": ["productions_write"]}))
        token = _token_of(response) if response.is_success else None
        if token is None:
            fetch.failure = response
        else:
            self._keep(token)

    async def _send(self, request: httpx.Request) -> httpx.Request:
        if self._pace is not None:
            await self._pace()
        return request

    def _keep(self, token: str) -> None:
        self._token = token
        self._fetched_at = self._clock()
        self._generation += 1
        log.debug("Got a Prodsmart access token")
