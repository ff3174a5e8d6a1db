"""Which machine's call goes next: freshest counts for all, by lag, with run states first.

A machine's *lag* is the age of its oldest part Prodsmart does not have yet. With N machines
producing and R requests a minute, no order keeps every lag under about N/R minutes; serving
the counter head of the machine with the greatest lag (round robin by lag) reaches that bound,
because a served machine's oldest part becomes its newest.
- A startstop head goes before counter heads unless they waited more than `STARTSTOP_LEAD`
  seconds longer than it: a stop is booked when it arrives, so it must be quick, but a storm of
  stops never starves counts for long (and a stop's own earlier counts already went before it).
- Parameters-only heads come last; the uplink sends them only in spare budget (they ride on
  counter calls otherwise).
- Each machine has a lane with its retry backoff; a lane in backoff is skipped until it ends.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from agent.config.sections import ProdsmartSection
from agent.core.backoff import Backoff
from agent.outbox.store import Head

STARTSTOP_LEAD = 30.0  # seconds a run-state change may overtake older counts


@dataclass
class Lane:
    """One machine's delivery state: its retry backoff and when it may send again."""

    backoff: Backoff
    until: float = 0.0
    failing: bool = False
    served: int = -1


class Scheduler:
    """Picks the next head among those the outbox reports; owns the machines' lanes."""

    def __init__(self, settings: ProdsmartSection, rng: random.Random, *,
                 startstop_lead: float = STARTSTOP_LEAD) -> None:
        self._settings = settings
        self._rng = rng
        self._lead = startstop_lead
        self.lanes: dict[str, Lane] = {}

    def lane(self, machine: str) -> Lane:
        lane = self.lanes.get(machine)
        if lane is None:
            backoff = Backoff(self._settings.retry_min, self._settings.retry_max, rng=self._rng)
            lane = self.lanes[machine] = Lane(backoff)
        return lane

    def choose(self, heads: list[Head], busy: Any, now: float) -> tuple[Head | None, float | None]:
        """The most urgent ready head, or None and how long until a lane's backoff ends (None:
        until woken). `busy`: the machines with a call in flight; `now`: the uplink's clock."""
        ready: list[Head] = []
        soonest: float | None = None
        for head in heads:
            if head.machine in busy:
                continue
            lane = self.lanes.get(head.machine)
            if lane is not None and lane.until > now:
                soonest = lane.until if soonest is None else min(soonest, lane.until)
                continue
            ready.append(head)
        if not ready:
            return None, None if soonest is None else soonest - now
        return min(ready, key=self._urgency), None

    def due(self, head: Head) -> float:
        """When `head` became due (wall clock): the order of heads, within and across agents."""
        return self._urgency(head)[1]

    def _urgency(self, head: Head) -> tuple[int, float, int, str]:
        """Sort key: parameters last; then by when the head became due (oldest first), a startstop
        `STARTSTOP_LEAD` seconds earlier than it was queued; ties: the least recently served."""
        served = self.lane(head.machine).served
        if head.kind == "parameters":
            return 1, head.created, served, head.machine
        if head.kind == "startstop":
            return 0, head.created - self._lead, served, head.machine
        due = head.oldest if head.oldest is not None else head.created
        return 0, due, served, head.machine
