"""Drains the outbox to Prodsmart: one HTTP client, a shared rate limit, FIFO lanes, retries, pauses.

The only module (with `agent.uplink.auth` and `agent.uplink.outcomes`) that imports httpx. Every
answer is classed once (`agent.uplink.outcomes.classify`, which documents the classes) and
settled here, in `_settle`, into an outcome for the outbox: acknowledged, retried on its lane,
a pause of every lane or of one machine's, or a dead letter (refusals: `agent.uplink.refusals`,
whose methods `Uplink` inherits).

Which call goes next is `agent.uplink.scheduler`'s choice (by lag); how many may go is the
budget's (`agent.uplink.budget`: this agent's token bucket, or the company's shared one). A
request taken from the budget for a call that is then not sent is given back; a 429 blocks the
budget (a shared one: every agent of the company) until Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TextIO
from urllib.parse import quote

import httpx

from agent import __version__
from agent.config.sections import ProdsmartSection
from agent.core.metrics import Metrics
from agent.outbox.store import Call, Head, Outbox
from agent.uplink.auth import Credentials, TokenAuth, protect_http_loggers, redact
from agent.uplink.budget import Budget, LocalBudget, take
from agent.uplink.journal import ANSWER_CHARS, CallJournal, LastCall
from agent.uplink.outcomes import classify, excerpt, is_token_request, may_have_arrived
from agent.uplink.pauses import Pause, Pauses, parse_retry_after
from agent.uplink.refusals import Refusals
from agent.uplink.scheduler import Lane, Scheduler

__all__ = ["Credentials", "Uplink", "parse_retry_after"]

log = logging.getLogger(__name__)

IDLE_RECHECK = 5.0  # seconds: how often an idle uplink looks at the database again


class Uplink(Pauses, Refusals):
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
        budget: Budget | None = None,
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
        self._budget: Budget = budget or LocalBudget(settings.requests_per_minute, metrics, burst=burst)
        self._pattern = re.compile(settings.not_increasing_pattern)
        self._auth_url = settings.url + settings.paths.authorization
        self._scheduler = Scheduler(settings, self._rng)
        self._pause = Pause()
        self._forbidden_streak: set[str] = set()  # machines answered 403 since the last delivery
        self._serial = itertools.count()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._running = False
        self.journal = CallJournal()  # the last call per machine and its answer, for the console
        protect_http_loggers()

    # ------------------------------------------------------------------ public

    @property
    def forbidden(self) -> list[str]:
        """The machines whose calls Prodsmart refuses with 403 while the credentials work."""
        return self._scheduler.forbidden()

    @property
    def budget(self) -> Budget:
        return self._budget

    def wake(self) -> None:
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        """Drain forever until cancelled; raises only StorageError or a bug."""
        self._running = True
        keeper = asyncio.create_task(self._keep_budget(), name="uplink budget")
        try:
            await self._loop(until_empty=False)
        finally:
            self._running = False
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _keep_budget(self) -> None:
        """A shared budget keeps in touch with Redis (and finds it again) while nothing is sent."""
        while True:
            try:
                await self._budget.keepalive()
            except Exception as exc:  # a bug here must not stop the deliveries
                log.debug("budget keepalive failed: %s", exc)
            await asyncio.sleep(1.0)

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
            auth = TokenAuth(self._credentials, self._auth_url, pace=lambda: take(self._budget))
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
                    if not self._dry_run and not await self._spend(head):
                        continue  # choose again: a more urgent call may have come meanwhile
                    call = await self._outbox.begin_attempt(head)
                    if call is None:  # coalesced away or held: nothing is sent, the request is not spent
                        if not self._dry_run:
                            await self._budget.refund()
                        continue
                    self._lane(head.machine).served = next(self._serial)
                    task = asyncio.create_task(self._deliver(client, call), name=f"uplink {head.machine}")
                    task.add_done_callback(lambda _t: self._wake.set())
                    tasks[head.machine] = task
            finally:
                for task in tasks.values():
                    task.cancel()
                await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def _spend(self, head: Head) -> bool:
        """Take one request from the budget for `head`; else wait (woken by a commit) and say no."""
        age = self._scheduler.age(head, self._clock())
        grant = await self._budget.acquire(spare=head.kind == "parameters", age=age)
        if grant.granted:
            return True
        if grant.blocked and self._pause.reason is None:
            # Another agent of the company got a 429: wait out its Retry-After like our own.
            self._start_pause("rate_limited", grant.wait)
            log.debug("Another agent of the company reached Prodsmart's rate limit: waiting %.0f s",
                      grant.wait)
        elif head.kind == "parameters":
            await self._nap(grant.wait)  # a counter call may come meanwhile and carry them
        else:
            await asyncio.sleep(grant.wait)
        return False

    async def _nap(self, seconds: float | None) -> None:
        """Sleep until woken (a commit, a finished call) or for `seconds`; never longer than
        IDLE_RECHECK, because a command beside the agent (`dead-letters retry`, `rebase`) queues
        or thaws calls in the database without waking it."""
        try:
            async with asyncio.timeout(IDLE_RECHECK if seconds is None else min(seconds, IDLE_RECHECK)):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _choose(
        self, heads: list[Head], tasks: dict[str, asyncio.Task[None]]
    ) -> tuple[Head | None, float | None]:
        """The next head to send (see `agent.uplink.scheduler`), or how long to wait for a lane's
        backoff to end (None: until woken)."""
        if len(tasks) >= self._concurrency or (self._pause.reason is not None and tasks):
            return None, None  # after a 429 or refused credentials, one probe at a time
        return self._scheduler.choose(heads, tasks, self._clock())

    def _lane(self, machine: str) -> Lane:
        return self._scheduler.lane(machine)

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
            sent = may_have_arrived(exc, self._auth_url)
            if not sent:
                await self._budget.refund()  # it never left this machine: Prodsmart did not count it
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
        for_token = is_token_request(response.request, self._auth_url)
        answer = ("(the access token request failed)" if for_token
                  else excerpt(redact(response.text), ANSWER_CHARS))
        self.journal.note(call.machine, LastCall(time.time(), call.kind, dict(call.body), status, answer))
        verdict = classify(status, for_token=for_token)
        if verdict in ("forbidden", "auth", "rate_limited"):
            await self._outbox.attempt_failed(call, unknown=False)
            if verdict == "forbidden":
                self._forbidden(call)
            elif verdict == "auth":
                self._auth_refused(status, for_token)
            else:
                await self._rate_limited(response)
            return
        self._end_pause("auth", "Prodsmart accepts the API credentials again")
        self._end_pause("rate_limited", "Prodsmart takes calls again after its rate limit")
        if verdict == "delivered":
            await self._delivered(call)
        elif verdict == "refused":
            await self._refused(call, response)
        else:
            detail = f"cannot get an access token: HTTP {status}" if for_token else f"HTTP {status}"
            await self._retry(call, unknown=verdict == "retry_unknown",
                              reason="token" if for_token else f"http_{status}", detail=detail)

    async def _delivered(self, call: Call) -> None:
        await self._outbox.ack(call, time.time())
        self._forbidden_streak.clear()
        lane = self._lane(call.machine)
        lane.backoff.reset()
        lane.until = 0.0
        if lane.forbidden:
            lane.forbidden = False
            log.info("Prodsmart allows the calls of %s again", call.machine)
        if lane.failing:
            lane.failing = False
            log.info("Prodsmart takes the calls of %s again", call.machine)

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


def _reap(tasks: dict[str, asyncio.Task[None]]) -> None:
    """Forget finished calls; re-raise what one raised (StorageError or a bug)."""
    for machine, task in list(tasks.items()):
        if task.done():
            del tasks[machine]
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
