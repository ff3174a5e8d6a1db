"""What the machine-logic roles share: notices, the per-machine sink they report into, value coercion."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from agent.core.model import Quality, Reading, Scalar

GOOD = Quality.GOOD
INF = math.inf


@dataclass(frozen=True, slots=True)
class Notice:
    """Something that deserves a metric or a log line; the service turns these into both.

    kinds: "reset", "wrap", "jump_rejected", "bad_value", "duplicate", "reset_pending"
    (a drop held until the next reading confirms it), "glitch" (a drop the next reading
    refuted), "rebaseline" (a counter's tag changed: new baseline, total kept),
    "state_invalid" (a persisted state could not be used).
    """

    kind: str
    machine: str
    role: str  # "count", "waste:Scrap", "running", "stop_reason", "param:temperature"
    detail: str = ""


class Sink:
    """One machine's accumulators: roles report into it, the `Logic` turns it into events.

    Roles never build events themselves so that one reading touching several roles of a
    machine yields at most one event of each kind.
    """

    __slots__ = ("code", "count_grew", "count_unread", "dirty", "notices", "params", "wake", "waste_grew")

    def __init__(self, code: str, notices: list[Notice], dirty: set[str]) -> None:
        self.code = code
        self.notices = notices  # shared by every machine of one Logic
        self.dirty = dirty  # shared: codes of machines whose persisted state changed
        self.count_grew = False
        self.waste_grew: list[str] = []
        self.params: dict[str, Scalar] | None = None
        self.wake = INF  # earliest new deadline a role asked for during this call
        # The count's last reading could not be read (True) or could (False); None: no news.
        self.count_unread: bool | None = None

    def notice(self, kind: str, role: str, detail: str = "") -> None:
        self.notices.append(Notice(kind, self.code, role, detail))

    def changed(self) -> None:
        self.dirty.add(self.code)

    def wake_at(self, when: float) -> None:
        if when < self.wake:
            self.wake = when


def unusable(reading: Reading) -> str | None:
    """Why a reading must not change any state (quality, read error), or None if it may."""
    if reading.error is not None:
        return f"read error: {reading.error}"
    if reading.quality is not GOOD:
        return f"quality {reading.quality.value}"
    return None


MAX_COUNT = 2**53  # the largest count or increment of a counter without a declared width


def whole_of(value: Any) -> int | None:
    """A counter value as an integer (of either sign), None if it is not a number.

    Floats are floored, except that float noise just below an integer (11.9999999999) rounds
    to it; numeric strings ("12", "12.0") are accepted; booleans are not counts.
    """
    kind = type(value)
    if kind is int:
        return int(value)
    if kind is float:
        return _floor(value)
    if kind is str:
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                return _floor(float(text))
            except ValueError:
                return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return whole_of(int(value) if isinstance(value, int) else float(value))


def _floor(value: float) -> int | None:
    if not math.isfinite(value):
        return None
    near = round(value)
    if abs(value - near) <= 1e-9 * max(1.0, abs(value)):
        return int(near)
    return math.floor(value)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_int(value: Any) -> int | None:
    """A persisted integer (JSON gives int; bools are refused), else None."""
    return value if type(value) is int else None


def as_float(value: Any) -> float | None:
    if type(value) in (int, float) and math.isfinite(value):
        return float(value)
    return None
