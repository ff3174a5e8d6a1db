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

The outbox stamps calls with the wall clock (it must survive restarts), which NTP may step. So
a head's age is read from the wall clock once, when the scheduler first sees it, and from then
on counted on the monotonic clock: a clock stepped back an hour must not make every new count
look an hour older than the backlog queued before the step (it would starve that backlog).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config.sections import ProdsmartSection
from agent.core.backoff import Backoff
from agent.outbox.store import Head

STARTSTOP_LEAD = 30.0  # seconds a run-state change may overtake older counts
STEP = 1.0  # seconds the wall clock may drift from the monotonic one before it counts as stepped


@dataclass
class Lane:
    """One machine's delivery state: its retry backoff and when it may send again."""

    backoff: Backoff
    until: float = 0.0
    failing: bool = False
    served: int = -1
    forbidden: bool = False  # Prodsmart answers 403 to this machine alone


class Scheduler:
    """Picks the next head among those the outbox reports; owns the machines' lanes."""

    def __init__(self, settings: ProdsmartSection, rng: random.Random, *,
                 startstop_lead: float = STARTSTOP_LEAD, wall: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._rng = rng
        self._lead = startstop_lead
        self._wall = wall
        self.lanes: dict[str, Lane] = {}
        self._seen: dict[str, tuple[float, float]] = {}  # machine -> (head's wall stamp, monotonic stamp)
        self._off: float | None = None

    def lane(self, machine: str) -> Lane:
        lane = self.lanes.get(machine)
        if lane is None:
            backoff = Backoff(self._settings.retry_min, self._settings.retry_max, rng=self._rng)
            lane = self.lanes[machine] = Lane(backoff)
        return lane

    def forbidden(self) -> list[str]:
        """The machines whose calls Prodsmart refuses with 403 while the credentials work."""
        return sorted(m for m, lane in self.lanes.items() if lane.forbidden)

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
        if len(self._seen) > 2 * len(heads) + 16:  # forget machines that have nothing queued
            present = {h.machine for h in heads}
            self._seen = {m: s for m, s in self._seen.items() if m in present}
        if not ready:
            return None, None if soonest is None else soonest - now
        wall = self._wall()
        return min(ready, key=lambda h: self._urgency(h, now, wall)), None

    def _offset(self, now: float, wall: float) -> float:
        """Monotonic minus wall clock; changed only when the wall clock was stepped (so heads
        stamped at the same wall time stay equal, and ties go round robin)."""
        if self._off is None or abs(now - wall - self._off) > STEP:
            self._off = now - wall
        return self._off

    def age(self, head: Head, now: float) -> float:
        """How long `head` has been due (seconds, >= 0): the order of heads, within and across
        agents. `now`: the uplink's monotonic clock."""
        return max(0.0, now - self._urgency(head, now, self._wall())[1])

    def _urgency(self, head: Head, now: float, wall: float) -> tuple[int, float, int, str]:
        """Sort key: parameters last; then by when the head became due on the monotonic clock
        (oldest first), a startstop `STARTSTOP_LEAD` seconds earlier than it was queued; ties: the
        least recently served."""
        served = self.lane(head.machine).served
        if head.kind == "parameters":
            return 1, head.created, served, head.machine
        stamp = head.oldest if head.kind == "counter" and head.oldest is not None else head.created
        seen = self._seen.get(head.machine)
        if seen is None or seen[0] != stamp:
            seen = self._seen[head.machine] = (stamp, min(now, stamp + self._offset(now, wall)))
        lead = self._lead if head.kind == "startstop" else 0.0
        return 0, seen[1] - lead, served, head.machine
