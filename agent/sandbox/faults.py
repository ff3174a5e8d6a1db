"""The active injected faults, and which request each one hits next."""

from __future__ import annotations

import random
from dataclasses import dataclass

from agent.sandbox.options import Fault


@dataclass
class _Active:
    fault: Fault
    remaining: int  # -1 = unlimited
    until: float | None
    rng: random.Random


class FaultBook:
    """Faults in injection order; the first active one that matches a request hits it.

    Not thread-safe: the Company calls it under its lock. `now` is monotonic time.
    """

    def __init__(self) -> None:
        self._active: list[_Active] = []

    def inject(self, fault: Fault, now: float) -> None:
        until = None if fault.seconds is None else now + fault.seconds
        self._active.append(_Active(fault, fault.hits, until, random.Random(fault.seed)))

    def clear(self) -> None:
        self._active.clear()

    def active(self, now: float) -> list[Fault]:
        self._expire(now)
        return [a.fault for a in self._active]

    def hit(self, endpoint: str, machine: str | None, now: float) -> Fault | None:
        """The fault that hits this request, if any; a hit uses up one of its count."""
        self._expire(now)
        for active in self._active:
            fault = active.fault
            if fault.endpoint is not None and fault.endpoint != endpoint:
                continue
            if fault.machine is not None and fault.machine != machine:
                continue
            # A miss by probability costs nothing, so `count` hits always happen eventually.
            if fault.probability < 1.0 and active.rng.random() >= fault.probability:
                continue
            if active.remaining > 0:
                active.remaining -= 1
            return fault
        return None

    def _expire(self, now: float) -> None:
        self._active = [a for a in self._active
                        if a.remaining != 0 and (a.until is None or now < a.until)]
