"""What the uplink does when Prodsmart refuses a call: dead letters, split parameters, and auth pauses.

Inherited by `agent.uplink.client.Uplink` (the settle path: `_settle` classes an answer with
`agent.uplink.outcomes.classify`, these methods act on the refusals); what they use of the
Uplink is declared below for the type checker only.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import httpx

from agent.outbox.store import Call
from agent.uplink.auth import redact
from agent.uplink.outcomes import excerpt

if TYPE_CHECKING:
    import random
    import re
    from collections.abc import Callable

    from agent.core.metrics import Metrics
    from agent.outbox.store import Outbox
    from agent.uplink.pauses import Pause
    from agent.uplink.scheduler import Lane

# The module these methods came from, so log lines (and the tests' log filters) read as they did.
log = logging.getLogger("agent.uplink.client")


class Refusals:
    """Refused calls (dead letters, parameters split off) and refused credentials (pauses)."""

    if TYPE_CHECKING:
        _outbox: Outbox
        _metrics: Metrics
        _pattern: re.Pattern[str]
        _pause: Pause
        _auth_retry: float
        _rng: random.Random
        _clock: Callable[[], float]
        _forbidden_streak: set[str]

        def _lane(self, machine: str) -> Lane: ...

        async def _delivered(self, call: Call) -> None: ...

        def _start_pause(self, reason: str, seconds: float) -> None: ...

    async def _refused(self, call: Call, response: httpx.Response) -> None:
        text = redact(response.text)
        status = response.status_code
        if call.kind == "counter" and status == 400 and self._pattern.search(text):
            if await self._outbox.outcome_unknown(call):
                await self._delivered(call)
                self._metrics.already_delivered.inc()
                log.info("Counter call of %s was already applied by an earlier attempt whose outcome was "
                         "unknown (Prodsmart: %s): counted as delivered", call.machine, excerpt(text))
                return
            dead = await self._outbox.dead_letter(call, status, text, time.time())
            log.error("Prodsmart refused the counter of %s as not increasing although no earlier attempt "
                      "can have reached it: the agent's totals and Prodsmart disagree (rebase the machine?). "
                      "Kept as dead letter %d: %s", call.machine, dead, excerpt(text))
            return
        if call.kind == "counter" and status == 400 and call.body.get("parameters"):
            # The parameters ride along: one Prodsmart refuses must not take the count with it.
            dead = await self._outbox.split_parameters(call, status, text, time.time())
            log.warning("Prodsmart refused the counter call of %s with parameters (HTTP 400): %s; the "
                        "parameters are kept as dead letter %d, the count goes again without them",
                        call.machine, excerpt(text), dead)
        else:
            dead = await self._outbox.dead_letter(call, status, text, time.time())
            log.warning("Prodsmart refused the %s call of %s (HTTP %d): %s; kept as dead letter %d",
                        call.kind, call.machine, status, excerpt(text), dead)
        lane = self._lane(call.machine)
        lane.backoff.reset()
        lane.until = 0.0

    def _forbidden(self, call: Call) -> None:
        """A 403 to one machine's call: that machine alone waits, probing about every `auth_retry`.
        A second machine refused before any call got through is the credentials, not the machines:
        every lane waits, as for a refused token request."""
        if self._forbidden_streak and call.machine not in self._forbidden_streak:
            self._forbidden_streak.add(call.machine)
            self._auth_refused(403, False)
            return
        self._forbidden_streak.add(call.machine)
        lane = self._lane(call.machine)
        lane.until = self._clock() + self._auth_retry * self._rng.uniform(0.8, 1.2)
        self._metrics.auth_failures.inc()
        if lane.forbidden:
            log.debug("Prodsmart still forbids the calls of %s (HTTP 403)", call.machine)
            return
        lane.forbidden = True
        log.error("Prodsmart forbids the calls of machine %s (HTTP 403): it waits, the other machines go "
                  "on; check that the machine code exists in Prodsmart and that the API key may use it. "
                  "Trying again about every %g s", call.machine, self._auth_retry)

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
