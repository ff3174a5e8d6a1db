"""Drains the outbox to Prodsmart: one HTTP client, a shared rate limit, FIFO lanes, retries, pauses.

The only module (with `agent.uplink.auth`) that imports httpx. Every answer is classed once,
in `_settle`, into an outcome for the outbox:
- 2xx: acknowledged;
- network error, timeout, 5xx: retried with backoff on that machine's lane only; if the request
  may have reached Prodsmart the call is marked "unknown outcome";
- 429: every lane waits for Retry-After; 401/403: every lane waits (bad credentials never turn
  the queue into dead letters), probing again about once a minute;
- a 400 "not increasing" to a counter call that an earlier attempt with an unknown outcome
  may already have applied: delivered (DESIGN.md, the one rule, point 4);
- any other 4xx: dead letter, and the lane goes on.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import logging
import random
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import quote

import httpx

from agent import __version__
from agent.config.sections import ProdsmartSection
from agent.core.backoff import Backoff
from agent.core.metrics import Metrics
from agent.outbox.store import Call, Head, Outbox
from agent.uplink.auth import Credentials, TokenAuth, protect_http_loggers, redact
from agent.uplink.journal import CallJournal, LastCall, excerpt
from agent.uplink.ratelimit import TokenBucket

__all__ = ["Credentials", "Uplink", "parse_retry_after"]

log = logging.getLogger(__name__)

PRIORITY = {"startstop": 0, "counter": 1, "parameters": 2}
DEFAULT_RETRY_AFTER = 60.0
MAX_RETRY_AFTER = 3600.0  # a bogus Retry-After must not silence the agent for days
# Errors raised before the request left this machine: Prodsmart cannot have applied it.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol,
            httpx.LocalProtocolError)


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
class _Lane:
    backoff: Backoff
    until: float = 0.0
    failing: bool = False
    served: int = -1


@dataclass
class _Pause:
    reason: str | None = None
    until: float = 0.0


class Uplink:
    """Sends the outbox's calls to Prodsmart until cancelled; `wake()` after each commit."""

    def __init__(
        self,
        outbox: Outbox,
        settings: ProdsmartSection,
        credentials: Credentials,
        metrics: Metrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        dry_run: bool = False,
        out: TextIO | None = None,
        concurrency: int = 4,
        burst: int = 2,
        auth_retry: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._credentials = credentials
        self._metrics = metrics
        self._transport = transport
        self._dry_run = dry_run
        self._out = out
        self._concurrency = concurrency
        self._auth_retry = auth_retry
        self._rng = rng or random.Random()
        self._clock: Callable[[], float] = time.monotonic
        self._bucket = TokenBucket(settings.requests_per_minute, burst)
        self._pattern = re.compile(settings.not_increasing_pattern)
        self._auth_url = settings.url + settings.paths.authorization
        self._lanes: dict[str, _Lane] = {}
        self._pause = _Pause()
        self._serial = itertools.count()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._running = False
        self.journal = CallJournal()  # the last call per machine and its answer, for the console
        protect_http_loggers()

    # ------------------------------------------------------------------ public

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

    def wake(self) -> None:
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        """Drain forever until cancelled; raises only StorageError or a bug."""
        self._running = True
        try:
            await self._loop(until_empty=False)
        finally:
            self._running = False

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - the service's shutdown budget
        """Send what can be sent within `timeout`; True if nothing is left waiting."""
        try:
            async with asyncio.timeout(timeout):
                if not self._running:
                    return await self._loop(until_empty=True)
                while True:  # the loop may have gone idle just before a last commit: check again
                    self.wake()
                    await self._idle.wait()
                    if not await self._outbox.heads():
                        return True
        except TimeoutError:
            return False

    # ------------------------------------------------------------------ scheduling

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        auth: httpx.Auth
        if self._settings.auth == "token":
            auth = TokenAuth(self._credentials, self._auth_url, pace=self._bucket.take)
        else:
            auth = httpx.BasicAuth(self._credentials.api_key, self._credentials.api_secret)
        limits = httpx.Limits(max_connections=self._concurrency + 1)
        async with httpx.AsyncClient(
            base_url=self._settings.url, auth=auth, timeout=self._settings.timeout, limits=limits,
            transport=self._transport, headers={"User-Agent": f"prodsmart-edge/{__version__}"},
        ) as client:
            yield client

    async def _loop(self, *, until_empty: bool) -> bool:
        tasks: dict[str, asyncio.Task[None]] = {}
        async with self._client() as client:
            try:
                while True:
                    self._wake.clear()
                    _reap(tasks)
                    pause = self._pause_left()
                    if pause > 0:
                        await self._nap(pause)
                        continue
                    heads = await self._outbox.heads()
                    head, wait = self._choose(heads, tasks)
                    if head is None:
                        if not heads and not tasks:
                            self._idle.set()
                            if until_empty:
                                return True
                        await self._nap(wait)
                        continue
                    if not self._dry_run and not self._bucket.try_take():
                        await asyncio.sleep(self._bucket.delay())
                        continue  # choose again: a more urgent call may have come meanwhile
                    call = await self._outbox.begin_attempt(head)
                    if call is None:
                        continue
                    self._lane(head.machine).served = next(self._serial)
                    task = asyncio.create_task(self._deliver(client, call), name=f"uplink {head.machine}")
                    task.add_done_callback(lambda _t: self._wake.set())
                    tasks[head.machine] = task
            finally:
                for task in tasks.values():
                    task.cancel()
                await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def _nap(self, seconds: float | None) -> None:
        """Sleep until woken (a commit, a finished call) or for `seconds`."""
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _pause_left(self) -> float:
        left = self._pause.until - self._clock()
        if left <= 0 and self._pause.reason == "rate_limited":
            # The wait is over; the episode (logged once) ends with the next answer that is not a 429.
            self._metrics.uplink_paused.labels("rate_limited").set(0)
        return max(0.0, left)

    def _choose(
        self, heads: list[Head], tasks: dict[str, asyncio.Task[None]]
    ) -> tuple[Head | None, float | None]:
        """The next head to send (startstop, then counter, then parameters; round robin), or how
        long to wait for a lane's backoff to end (None: until woken)."""
        if len(tasks) >= self._concurrency or (self._pause.reason is not None and tasks):
            return None, None  # after a 429 or refused credentials, one probe at a time
        now = self._clock()
        ready: list[Head] = []
        soonest: float | None = None
        for head in heads:
            if head.machine in tasks:
                continue
            lane = self._lanes.get(head.machine)
            if lane is not None and lane.until > now:
                soonest = lane.until if soonest is None else min(soonest, lane.until)
                continue
            ready.append(head)
        if not ready:
            return None, None if soonest is None else soonest - now
        best = min(ready, key=lambda h: (PRIORITY[h.kind], self._lane(h.machine).served, h.machine))
        return best, None

    def _lane(self, machine: str) -> _Lane:
        lane = self._lanes.get(machine)
        if lane is None:
            backoff = Backoff(self._settings.retry_min, self._settings.retry_max, rng=self._rng)
            lane = self._lanes[machine] = _Lane(backoff)
        return lane

    # ------------------------------------------------------------------ one call

    def _path(self, call: Call) -> str:
        template = getattr(self._settings.paths, call.kind)
        return str(template).replace("{machine}", quote(call.machine, safe=""))

    async def _deliver(self, client: httpx.AsyncClient, call: Call) -> None:
        path = self._path(call)
        if self._dry_run:
            print(f"POST {path} {json.dumps(call.body)}", file=self._out or sys.stdout, flush=True)
            self.journal.note(call.machine, LastCall(time.time(), call.kind, dict(call.body), 200, "dry run"))
            await self._outbox.ack(call, time.time())
            return
        started = self._clock()
        try:
            response = await client.post(path, json=dict(call.body))
        except httpx.HTTPError as exc:
            self._metrics.calls.labels(call.kind, "error").inc()
            sent = not isinstance(exc, NOT_SENT)
            detail = f"{type(exc).__name__}: {redact(exc) or 'no detail'}"
            self.journal.note(call.machine, LastCall(time.time(), call.kind, dict(call.body), 0, detail))
            await self._retry(call, unknown=sent, reason="timeout" if isinstance(
                exc, httpx.TimeoutException) else "network", detail=detail)
            return
        finally:
            self._metrics.call_latency.labels(call.kind).observe(self._clock() - started)
        await self._settle(call, response)

    async def _settle(self, call: Call, response: httpx.Response) -> None:
        status = response.status_code
        self._metrics.calls.labels(call.kind, str(status)).inc()
        for_token = response.request.url.path == httpx.URL(self._auth_url).path
        answer = "(the access token request failed)" if for_token else excerpt(redact(response.text))
        self.journal.note(call.machine, LastCall(time.time(), call.kind, dict(call.body), status, answer))
        if status in (401, 403):
            await self._outbox.attempt_failed(call, unknown=False)
            self._auth_refused(status, for_token)
            return
        if status == 429:
            await self._outbox.attempt_failed(call, unknown=False)
            self._rate_limited(response)
            return
        self._end_pause("auth", "Prodsmart accepts the API credentials again")
        self._end_pause("rate_limited", "Prodsmart takes calls again after its rate limit")
        if for_token:
            await self._retry(call, unknown=False, reason="token",
                              detail=f"cannot get an access token: HTTP {status}")
        elif response.is_success:
            await self._delivered(call)
        elif status >= 500 or status == 408:
            await self._retry(call, unknown=True, reason=f"http_{status}", detail=f"HTTP {status}")
        elif 400 <= status < 500:
            await self._refused(call, response)
        else:  # 1xx/3xx: not applied; a redirect here is a misconfigured URL, not the call's fault
            await self._retry(call, unknown=False, reason=f"http_{status}", detail=f"HTTP {status}")

    async def _delivered(self, call: Call) -> None:
        await self._outbox.ack(call, time.time())
        lane = self._lane(call.machine)
        lane.backoff.reset()
        lane.until = 0.0
        if lane.failing:
            lane.failing = False
            log.info("Prodsmart takes the calls of %s again", call.machine)

    async def _refused(self, call: Call, response: httpx.Response) -> None:
        text = redact(response.text)
        status = response.status_code
        if call.kind == "counter" and status == 400 and self._pattern.search(text):
            if call.unknown:
                await self._delivered(call)
                self._metrics.already_delivered.inc()
                log.info("Counter call of %s was already applied by an earlier attempt whose outcome was "
                         "unknown (Prodsmart: %s): counted as delivered", call.machine, _excerpt(text))
                return
            dead = await self._outbox.dead_letter(call, status, text, time.time())
            log.error("Prodsmart refused the counter of %s as not increasing although no earlier attempt "
                      "can have reached it: the agent's totals and Prodsmart disagree (rebase the machine?). "
                      "Kept as dead letter %d: %s", call.machine, dead, _excerpt(text))
            return
        dead = await self._outbox.dead_letter(call, status, text, time.time())
        log.warning("Prodsmart refused the %s call of %s (HTTP %d): %s; kept as dead letter %d",
                    call.kind, call.machine, status, _excerpt(text), dead)
        lane = self._lane(call.machine)
        lane.backoff.reset()
        lane.until = 0.0

    async def _retry(self, call: Call, *, unknown: bool, reason: str, detail: str) -> None:
        await self._outbox.attempt_failed(call, unknown=unknown)
        self._metrics.retries.labels(call.kind, reason).inc()
        lane = self._lane(call.machine)
        delay = lane.backoff.next_delay()
        lane.until = self._clock() + delay
        level = logging.DEBUG if lane.failing else logging.WARNING
        lane.failing = True
        log.log(level, "Cannot deliver the %s call of %s to Prodsmart (POST %s): %s; retrying in %.3g s",
                call.kind, call.machine, self._path(call), detail, delay)

    # ------------------------------------------------------------------ pauses

    def _rate_limited(self, response: httpx.Response) -> None:
        seconds = parse_retry_after(response.headers.get("Retry-After"))
        self._bucket.empty()
        first = self._pause.reason != "rate_limited"
        self._metrics.rate_limited.inc()
        self._start_pause("rate_limited", seconds)
        log.log(logging.WARNING if first else logging.DEBUG,
                "Prodsmart's rate limit is reached (HTTP 429): every machine waits %.0f s", seconds)

    def _auth_refused(self, status: int, for_token: bool) -> None:
        first = self._pause.reason != "auth"
        self._metrics.auth_failures.inc()
        self._start_pause("auth", self._auth_retry * self._rng.uniform(0.8, 1.2))
        what = "the access token request" if for_token else "the API credentials"
        if first:
            log.error("Prodsmart refused %s (HTTP %d): nothing is sent until they work; check "
                      "PRODSMART_API_KEY and PRODSMART_API_SECRET. Trying again about every %g s",
                      what, status, self._auth_retry)
        else:
            log.debug("Prodsmart still refuses %s (HTTP %d)", what, status)

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


def _reap(tasks: dict[str, asyncio.Task[None]]) -> None:
    """Forget finished calls; re-raise what one raised (StorageError or a bug)."""
    for machine, task in list(tasks.items()):
        if task.done():
            del tasks[machine]
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


def _excerpt(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."
