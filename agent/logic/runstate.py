"""Run states: a debounced running tag, the downtime type from a reason tag, and idle detection.

- `running` comes from a boolean tag (true/false, 1/0, "on"/"off", "run"/"stop", ...) or,
  with `running_values`, from a numeric/enum tag (the listed values mean running; numbers
  compare numerically, strings case-insensitively); `invert` flips the result.
- Debounce: a new state must hold for `min_duration`; a flip back before that cancels it.
  A state change is sent by the first `tick()`/`apply()` *after* the moment it is due, even
  with `min_duration: 0`, so that a stop reason read in the same poll as the stop is known.
- The stop's downtime type is the stop reason when the stop is sent, mapped through
  `types` (by `reason_key`), else `default`. A reason that changes while the machine is
  stopped sends nothing: Prodsmart has no call to change an open downtime's type.
  A start carries the type of the downtime it closes.
- Idle (`idle_after`): running, but the count did not grow for that long, sends a stop with
  `idle_type`; the next count growth sends the start. While the count cannot be read (its
  connection is down, its readings are errors or of bad quality) there is no idle: the idle
  clock starts again when it can be read. A real stop while idle sends nothing
  more (the idle downtime stays open) and the start that follows closes it.
- Only transitions are sent. The last sent state is persisted, so a restart sends nothing
  unless the state really changed. Prodsmart treats a machine without an open downtime as
  running, so the first observation after install sends nothing if the machine runs and a
  stop if it is stopped.
"""

from __future__ import annotations

import math
from typing import Any

from agent.config.specs import MachineSpec, reason_key
from agent.core.model import Event, Reading, RunStateChanged, Scalar
from agent.logic.common import INF, Sink, as_float, unusable

_TRUE = frozenset({"true", "on", "run", "running", "1"})
_FALSE = frozenset({"false", "off", "stop", "stopped", "0"})


class RunningValue:
    """Turns a raw running-tag value into running (True) / stopped (False), or None if unusable."""

    __slots__ = ("invert", "numbers", "texts")

    def __init__(self, values: tuple[Scalar, ...] | None, invert: bool) -> None:
        self.invert = invert
        self.numbers: frozenset[float] | None = None
        self.texts: frozenset[str] = frozenset()
        if values is not None:
            numbers: set[float] = set()
            texts: set[str] = set()
            for v in values:
                if isinstance(v, str):
                    texts.add(v.strip().lower())
                    number = _number(v)
                    if number is not None:
                        numbers.add(number)
                else:
                    numbers.add(float(v))
            self.numbers, self.texts = frozenset(numbers), frozenset(texts)

    def __call__(self, value: Scalar | None) -> bool | None:
        state = self._listed(value) if self.numbers is not None else _boolean(value)
        if state is None:
            return None
        return state != self.invert

    def _listed(self, value: Scalar | None) -> bool | None:
        assert self.numbers is not None
        if isinstance(value, str):
            text = value.strip().lower()
            if text in self.texts:
                return True
            number = _number(text)
            return number is not None and number in self.numbers
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return float(value) in self.numbers


def _number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _boolean(value: Scalar | None) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return True if value == 1 else False if value == 0 else None
    if isinstance(value, str):
        text = value.strip().lower()
        return True if text in _TRUE else False if text in _FALSE else None
    return None


class RunState:
    """Run state of one machine: debounce, stop reason, idle detection, last sent state."""

    __slots__ = ("cand", "cand_since", "default", "down", "idle", "idle_after", "idle_type", "interpret",
                 "last_growth", "min_duration", "reason", "sent", "sent_type", "sink", "stable", "types",
                 "unread")

    def __init__(self, sink: Sink, spec: MachineSpec, state: Any = None, now: float | None = None) -> None:
        self.sink = sink
        running = spec.running
        self.interpret = RunningValue(running.running_values, running.invert) if running else None
        self.types = spec.stop_reason.types
        self.default = spec.stop_reason.default
        self.min_duration = spec.min_duration
        self.idle_after = spec.idle_after if spec.idle_after and spec.counter is not None else None
        self.idle_type = spec.idle_type
        self.reason: Scalar | None = None  # last good stop-reason value
        self.cand: bool | None = None  # a state waiting out min_duration
        self.cand_since = 0.0
        # The debounced state; without a running tag only idle detection decides, so "running".
        self.stable: bool | None = None if spec.running else True
        self.last_growth: float | None = None
        self.sent = True  # what Prodsmart was told; it takes a machine without downtime as running
        self.sent_type: str | None = None  # the type of the downtime opened last
        self.idle = False
        self.down = False  # the connection is down
        self.unread = False  # the count's last reading was a read error or of bad quality
        if state is not None:
            self._load(state, now)

    # ------------------------------------------------------------------ inputs

    def feed_running(self, reading: Reading, now: float) -> None:
        assert self.interpret is not None
        why = unusable(reading)
        state = self.interpret(reading.value) if why is None else None
        if state is None:
            self.sink.notice("bad_value", "running", why or f"not a run state: {reading.value!r}")
        elif state == self.stable:
            if self.cand is not None:
                self.cand = None  # flipped back within min_duration: nothing happened
                self.sink.changed()
        elif state != self.cand:
            self.cand = state
            self.cand_since = now
            self.sink.wake_at(now + self.min_duration)
            self.sink.changed()

    def feed_reason(self, reading: Reading, now: float) -> None:
        why = unusable(reading)
        if why is not None or reading.value is None:
            self.sink.notice("bad_value", "stop_reason", why or "no value")
        else:
            self.reason = reading.value

    def arm(self, now: float) -> None:
        """Start the idle clock and a restored debounce (at the first call that brings a time)."""
        if self.cand is not None:
            if self.cand_since > now:
                self.cand_since = now
            self.sink.wake_at(self.due)
        if self.last_growth is None:
            self.last_growth = now
            if self.idle_after is not None:
                self.sink.wake_at(now + self.idle_after)

    def growth(self, now: float, out: list[Event]) -> None:
        """The count grew: the idle clock restarts and an idle machine runs again. A start that
        is due goes out before the count: the parts were made after it."""
        if self.cand is True and self.due <= now:
            self.advance(now, out)
        self.last_growth = now
        if self.idle:
            self.idle = False
            self.sink.changed()
            self._settle(out)
            if self.idle_after is not None:
                self.sink.wake_at(now + self.idle_after)

    def sight(self, now: float, *, down: bool | None = None, unread: bool | None = None) -> None:
        """Whether the count can be read. Idle means "no count", which cannot be told while the
        counter cannot be read: the idle clock stops, and starts again when it can."""
        blind = self.down or self.unread
        if down is not None:
            self.down = down
        if unread is not None:
            self.unread = unread
        if blind and not (self.down or self.unread):
            self.last_growth = now
            if self.idle_after is not None:
                self.sink.wake_at(now + self.idle_after)

    # ------------------------------------------------------------------ time

    @property
    def due(self) -> float:
        """When the pending debounced state is due (INF if none)."""
        return self.cand_since + self.min_duration if self.cand is not None else INF

    def next_deadline(self) -> float:
        idle = INF
        if (self.idle_after is not None and self.stable and not self.idle and self.last_growth is not None
                and not (self.down or self.unread)):
            idle = self.last_growth + self.idle_after
        return min(self.due, idle)

    def advance(self, now: float, out: list[Event]) -> None:
        """Apply what is due at `now`: a debounced state, idle; emit the resulting transition."""
        if self.cand is not None and self.cand_since + self.min_duration <= now:
            state, self.cand = self.cand, None
            self.stable = state
            self.sink.changed()
            if state:
                self.last_growth = now  # the idle clock starts when the machine starts
            elif self.idle:
                self.idle = False  # really stopped now; the idle downtime stays open
                self.sink.changed()
        if (self.idle_after is not None and self.stable and not self.idle and self.last_growth is not None
                and not (self.down or self.unread) and self.last_growth + self.idle_after <= now):
            self.idle = True
            self.sink.changed()
        self._settle(out)

    def _settle(self, out: list[Event]) -> None:
        if self.stable is None:
            return
        want = self.stable and not self.idle
        if want == self.sent:
            return
        if want:
            out.append(RunStateChanged(self.sink.code, True, self.sent_type or self.default))
        else:
            self.sent_type = self.idle_type if self.idle else self._reason_type()
            out.append(RunStateChanged(self.sink.code, False, self.sent_type))
        self.sent = want
        self.sink.changed()

    def _reason_type(self) -> str:
        if self.reason is None:
            return self.default
        return self.types.get(reason_key(self.reason), self.default)

    # ------------------------------------------------------------------ persistence

    def dump(self) -> dict[str, Any]:
        state: dict[str, Any] = {"sent": self.sent, "type": self.sent_type, "idle": self.idle}
        if self.stable is not None and self.interpret is not None:
            state["stable"] = self.stable
        if self.cand is not None:
            # A state waiting out min_duration: the message that brought it may never come again
            # (a publish-on-change topic, acknowledged), so it is committed with the rest.
            state["cand"], state["since"] = self.cand, self.cand_since
        if self.reason is not None:
            state["reason"] = self.reason
        return state

    def _load(self, state: Any, now: float | None) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("sent"), bool):
            self.sink.notice("state_invalid", "running", "no usable run state: taken as running")
            return
        self.sent = state["sent"]
        kind = state.get("type")
        self.sent_type = kind if isinstance(kind, str) else None
        self.idle = state.get("idle") is True and self.idle_after is not None and not self.sent
        if self.interpret is not None and isinstance(state.get("stable"), bool):
            self.stable = state["stable"]
        reason = state.get("reason")
        if isinstance(reason, (str, int, float)):
            self.reason = reason
        cand = state.get("cand")
        if isinstance(cand, bool) and self.interpret is not None and cand != self.stable:
            self.cand = cand
            since = as_float(state.get("since"))
            # Times of this process's clock carry over a reload; after a restart the debounce
            # starts again at the first call (the clock of another boot means nothing here).
            self.cand_since = since if now is not None and since is not None and since <= now else INF
