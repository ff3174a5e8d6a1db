"""Parameters (process values): scale/offset, deadband, min_interval and the max_interval heartbeat.

- Numbers become `value * scale + offset`; booleans and strings pass through unchanged.
- A value is sent when it is the first one, or differs from the last *sent* value by at least
  `deadband` (any change with deadband 0; strings and booleans: any change).
- `min_interval`: at most one send per interval. A change inside the interval is held and
  sent by `tick()` when the interval ends, with the newest value; if the value comes back
  within the deadband meanwhile, nothing is sent.
- `max_interval`: when nothing was sent for that long, the newest value is sent again.
- Parameter state is not persisted: after a restart the first value is sent again, which
  costs one low-priority call and tells Prodsmart the current value.
"""

from __future__ import annotations

import math

from agent.config.specs import ParameterSpec
from agent.core.model import Reading, Scalar
from agent.logic.common import INF, Sink, is_number, unusable


class Parameter:
    """One parameter of one machine."""

    __slots__ = ("code", "deadband", "heartbeat", "held", "identity", "last", "last_at", "latest",
                 "min_interval", "role", "sink", "spec")

    def __init__(self, sink: Sink, code: str, spec: ParameterSpec) -> None:
        self.sink = sink
        self.code = code
        self.role = f"param:{code}"
        self.spec = spec
        self.identity = spec.scale == 1.0 and spec.offset == 0.0
        self.deadband = spec.deadband
        self.min_interval = spec.min_interval
        self.heartbeat = spec.max_interval if spec.max_interval else None  # 0 would spin
        self.last: Scalar | None = None  # last sent
        self.last_at = -INF
        self.latest: Scalar | None = None  # newest good value
        self.held: Scalar | None = None  # a change waiting for min_interval to pass

    def feed(self, reading: Reading, now: float) -> None:
        value = self._value(reading)
        if value is None:
            return
        self.latest = value
        if self.last is not None and not self._changed(value):
            self.held = None  # back within the deadband: nothing to send
        elif now - self.last_at >= self.min_interval:
            self._send(value, now)
        else:
            self.held = value
            self.sink.wake_at(self.last_at + self.min_interval)

    def fire(self, now: float) -> None:
        """Send what is due at `now`: a held change, or the heartbeat."""
        if self.held is not None and self.last_at + self.min_interval <= now:
            self._send(self.held, now)
        elif self.heartbeat is not None and self.latest is not None and self.last_at + self.heartbeat <= now:
            self._send(self.latest, now)

    def next_deadline(self) -> float:
        due = self.last_at + self.min_interval if self.held is not None else INF
        if self.heartbeat is not None and self.latest is not None:
            due = min(due, self.last_at + self.heartbeat)
        return due

    def _send(self, value: Scalar, now: float) -> None:
        self.last = value
        self.last_at = now
        self.held = None
        sink = self.sink
        if sink.params is None:
            sink.params = {}
        sink.params[self.code] = value
        if self.heartbeat is not None:
            sink.wake_at(now + self.heartbeat)

    def _changed(self, value: Scalar) -> bool:
        last = self.last
        if is_number(value) and is_number(last):
            diff: float = abs(value - last)  # type: ignore[operator]
            return diff > 0 and diff >= self.deadband
        return type(value) is not type(last) or value != last

    def _value(self, reading: Reading) -> Scalar | None:
        why = unusable(reading)
        value = reading.value
        if why is None and value is not None:
            if isinstance(value, (str, bool)):
                return value
            if math.isfinite(value):
                return value if self.identity else self._scaled(value)
            why = f"not a finite number: {value!r}"
        self.sink.notice("bad_value", self.role, why or "no value")
        return None

    def _scaled(self, value: int | float) -> int | float:
        scale, offset = self.spec.scale, self.spec.offset
        if isinstance(value, int) and scale.is_integer() and offset.is_integer():
            return value * int(scale) + int(offset)  # exact, also for big integers
        return float(f"{value * scale + offset:.12g}")  # no float noise such as 18.000000000000004
