"""Counter totals: raw PLC values that reset, wrap and glitch, turned into one total that never decreases.

`mode: total` (a register holding a running count):
- `raw >= raw_last`: the difference is counted.
- `raw < raw_last` (a drop): with `confirm_reset` (the default) the drop is held until the
  next good reading, because a single glitch read of 0 must not count the whole counter
  twice. That next reading decides:
    * `>= raw_last`: the drop was a glitch; the difference to `raw_last` is counted.
    * `< pending`: it dropped again; the newer, lower value is held instead.
    * otherwise the drop is confirmed: a **wrap** when the tag declares a modulus and the
      drop was more than half of it (`raw + modulus - raw_last` counted), else a **reset**
      (`raw` counted: everything since the counter restarted).
  Wraps are held too: with a 16-bit counter at 40000 a glitch of 0 looks like a wrap.
  The price is that a wrap is counted one reading later. Without `confirm_reset` drops are
  decided at once.
- `max_rate`: an increment above `max_rate` x (seconds since the last good reading, at least
  1 s so that count quantisation and batching jitter never trip it) is refused: the
  baseline moves to the new value and nothing is counted.
- The first reading ever is only a baseline. A persisted `raw_last` is the baseline after a
  restart, so what was produced while the agent was down is counted on the first read.
- When the tag key or where it is read changes (a reload pointed the role at another register,
  or moved the machine to another connection, host, port or unit) the next reading is a new
  baseline; the total is kept, so it never decreases.

`mode: delta` (a publisher sending "3 more parts"): every good value is added. Readings that
carry a `msg_id` are checked against the last `DEDUPE_IDS` ids of the role. The ids are not
part of the dumped state: each new one is handed out once (`drain_ids`) for the outbox to store
in its own table, which gives them back in the loaded state ("ids") so that a redelivery after a
restart is still caught.

A reading marked `redelivered` (MQTT DUP after a crash) below `raw_last` is an old total:
ignored, never taken for a drop.

Unusable readings (bad quality, read error, None, NaN, infinities, negatives, booleans,
non-numeric strings, values beyond the declared width or, without one, beyond 2^53) change
nothing and raise a "bad_value" notice. A signed register type (`int16`, `int32`...) is read
as the two's-complement unsigned value of its width: 32767 -> -32768 is a wrap. An increment
above 2^53 (or one that would take the total past 2^62) is refused like a `max_rate` jump.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from agent.config.specs import CounterSpec
from agent.core.model import Reading
from agent.logic.common import MAX_COUNT, Sink, as_float, as_int, unusable, whole_of

DEDUPE_IDS = 10_000
MAX_TOTAL = 2**62  # a total stays far below what SQLite holds (2^63), offset included
MIN_RATE_WINDOW = 1.0  # seconds: the shortest interval max_rate is applied over


class Counter:
    """The state of one counter role of one machine ("count" or "waste:<code>")."""

    __slots__ = ("code", "fresh", "ids", "key", "limit", "pending", "raw", "role", "seen", "sink", "spec",
                 "t", "total", "unread", "wall", "wall_now")

    def __init__(self, sink: Sink, role: str, spec: CounterSpec, state: Any = None,
                 now: float | None = None, floor: int = 0) -> None:
        self.sink = sink
        self.role = role
        self.code = role.partition(":")[2]  # the waste code, "" for the count
        self.spec = spec
        self.key = spec.tag
        self.raw: int | None = None  # last good raw value: the baseline
        self.total = 0
        self.pending: int | None = None  # a drop waiting for the next reading
        self.t: float | None = None  # when the baseline was last read (for max_rate), monotonic
        self.wall: float | None = None  # the same moment on the wall clock (survives a restart)
        self.wall_now: float | None = None  # the wall time of the reading being applied
        self.unread = False  # the last reading was a read error or of bad quality
        self.limit = self._limit(spec)  # the largest count a reading may give as it is
        self.ids: deque[str] = deque(maxlen=DEDUPE_IDS)
        self.seen: set[str] = set()
        self.fresh: list[str] = []  # ids counted since the last drain_ids
        if state is not None:
            self._load(state, now)
        if self.total < floor:
            # The outbox knows more was counted (the state was lost or damaged): resume from there,
            # or new counts would stay below what Prodsmart holds and be dropped until they pass it.
            if state is not None:
                self.sink.notice("state_invalid", role, f"the total resumes from {floor} (the outbox)")
            self.total = floor
            self.sink.changed()

    # ------------------------------------------------------------------ readings

    def feed(self, reading: Reading, now: float) -> None:
        """Apply one reading at `now` (monotonic seconds); report growth into the sink."""
        self.wall_now = reading.received_time or None
        if self.spec.mode == "delta":
            self._delta(reading, now)
            return
        raw = self._count_of(reading)
        if raw is None:
            return
        last = self.raw
        if reading.redelivered and last is not None and raw < last:
            # An old total delivered again after a crash (committed, not acknowledged): taking
            # it for a reset would count it twice. A real reset shows in the next messages.
            self.sink.notice("stale_redelivery", self.role, f"{raw} < {last}")
            return
        if last is None:
            self._baseline(raw, now)
        elif self.pending is not None:
            self._resolve(raw, now)
        elif raw >= last:
            if raw == last:
                self._stamp(now)  # reaffirmed: max_rate measures from here
            else:
                self._count(raw - last, raw, now)
        elif self.spec.confirm_reset:
            self.pending = raw
            self.sink.changed()
            self.sink.notice("reset_pending", self.role, f"{last} -> {raw}")
        else:
            self._drop(raw, raw, now)

    def _baseline(self, raw: int, now: float) -> None:
        self.raw = raw
        self._stamp(now)
        self.sink.changed()

    def _resolve(self, raw: int, now: float) -> None:
        """The reading after a drop: glitch, a further drop, or confirmation."""
        last, low = self.raw, self.pending
        assert last is not None and low is not None
        if raw >= last:
            self.pending = None
            self.sink.notice("glitch", self.role, f"{last} -> {low} -> {raw}")
            if raw > last:
                self._count(raw - last, raw, now)
            else:
                self._stamp(now)
                self.sink.changed()
        elif raw < low:
            self.pending = raw
            self.sink.changed()
        else:
            self.pending = None
            self._drop(low, raw, now)

    def _drop(self, low: int, raw: int, now: float) -> None:
        """A confirmed drop from the baseline to `low`; the counter now reads `raw` (>= low)."""
        last = self.raw
        assert last is not None
        modulus = self.spec.modulus
        if modulus is not None and 2 * (last - low) > modulus:
            kind, inc = "wrap", raw + modulus - last
        else:
            kind, inc = "reset", raw
        if self._count(inc, raw, now):
            self.sink.notice(kind, self.role, f"{last} -> {low}")

    def _count(self, inc: int, raw: int, now: float) -> bool:
        """Add `inc` and move the baseline to `raw`, unless max_rate refuses the jump."""
        if self._implausible(inc, now):
            self.sink.notice("jump_rejected", self.role, f"{self.raw} -> {raw}: +{inc}")
            inc = 0
        self.raw = raw
        self._stamp(now)
        self.sink.changed()
        if inc:
            self.total += inc
            self._grew()
        return inc > 0

    def _stamp(self, now: float) -> None:
        self.t = now
        self.wall = self.wall_now

    def _implausible(self, inc: int, now: float) -> bool:
        if inc > MAX_COUNT or self.total + inc > MAX_TOTAL:
            return True  # no counter makes 2^53 parts between two readings
        rate = self.spec.max_rate
        if rate is None:
            return False
        if self.t is not None:
            elapsed = now - self.t
        elif self.wall is not None and self.wall_now is not None:
            # The first reading after a restart: only the wall clock spans it. A negative span is
            # a clock stepped back: the time is unknown, so nothing is refused.
            elapsed = self.wall_now - self.wall
            if elapsed < 0:
                return False
        else:
            return False
        return inc > rate * max(elapsed, MIN_RATE_WINDOW)

    def _grew(self) -> None:
        if self.code:
            self.sink.waste_grew.append(self.code)
        else:
            self.sink.count_grew = True

    def _count_of(self, reading: Reading) -> int | None:
        """The reading's value as a count, or None (reported as a bad value) if unusable."""
        why = unusable(reading)
        if (why is not None) != self.unread:
            self.unread = why is not None
            if not self.code:
                self.sink.count_unread = self.unread  # idle detection pauses while it cannot read
        value = whole_of(reading.value) if why is None else None
        if value is not None and 0 <= value <= self.limit:
            return value  # the usual case, checked first
        if why is None:
            why = f"not a count: {reading.value!r:.60}" if value is None else self._out_of_range(value)
        if why is not None or value is None:
            self.sink.notice("bad_value", self.role, why or "")
            return None
        return value + self.spec.modulus if value < 0 and self.spec.modulus else value

    @staticmethod
    def _limit(spec: CounterSpec) -> int:
        limit = spec.modulus - 1 if spec.modulus else MAX_COUNT
        if spec.signed and spec.modulus:
            limit = spec.modulus // 2 - 1
        return min(limit, MAX_COUNT) if spec.mode == "delta" else limit

    def _out_of_range(self, value: int) -> str | None:
        """Why an integer cannot be a count (or an increment) of this counter, None if it can.

        A signed register's negative value is its two's-complement unsigned value; anything
        beyond the declared width (without one, 2^53) is a broken sensor or publisher."""
        spec = self.spec
        if value < 0:
            if spec.signed and spec.modulus and -value <= spec.modulus // 2:
                return None
            return f"negative: {value}"
        limit = spec.modulus - 1 if spec.modulus else MAX_COUNT
        if spec.mode == "delta":
            limit = min(limit, MAX_COUNT)
        if spec.signed and spec.modulus and value >= spec.modulus // 2:
            limit = spec.modulus // 2 - 1
        if value > limit:
            return f"{_short(value)} is beyond the counter's range (at most {limit})"
        return None

    def _delta(self, reading: Reading, now: float) -> None:
        msg_id = reading.msg_id
        if msg_id is not None and msg_id in self.seen:
            self.sink.notice("duplicate", self.role, msg_id)
            return
        inc = self._count_of(reading)
        if inc is None:
            return
        if msg_id is not None:
            if len(self.ids) == DEDUPE_IDS:
                self.seen.discard(self.ids[0])
            self.ids.append(msg_id)
            self.fresh.append(msg_id)
            self.seen.add(msg_id)
        if self._implausible(inc, now):
            self.sink.notice("jump_rejected", self.role, f"+{inc}")
            inc = 0
        self._stamp(now)
        self.sink.changed()
        if inc:
            self.total += inc
            self._grew()

    # ------------------------------------------------------------------ persistence

    def dump(self) -> dict[str, Any]:
        state: dict[str, Any] = {"key": self.key, "where": self.spec.where, "total": self.total,
                                 "raw": self.raw, "pending": self.pending, "t": self.t, "wall": self.wall}
        return state

    def drain_ids(self) -> list[str]:
        """The message ids counted since the last call, oldest first (for the outbox to store)."""
        fresh, self.fresh = self.fresh, []
        return fresh

    def _times(self, state: dict[str, Any], now: float | None) -> None:
        """Monotonic times carry over a reload only (`now` given); the wall time over a restart.
        A state from before monotonic times holds the wall time in "t"."""
        t = as_float(state.get("t"))
        if "wall" not in state:
            self.wall = t
            return
        self.wall = as_float(state.get("wall"))
        self.t = t if now is not None and t is not None and t <= now else None

    def _load(self, state: Any, now: float | None) -> None:
        if not isinstance(state, dict) or as_int(state.get("total")) is None or state["total"] < 0:
            self.sink.notice("state_invalid", self.role, "no usable total")
            return
        self.total = state["total"]
        ids = state.get("ids")
        if isinstance(ids, list):
            self.ids.extend(str(i) for i in ids[-DEDUPE_IDS:])
            self.seen.update(self.ids)
        if self.spec.mode == "delta":
            self._times(state, now)
            return  # a delta counter has no baseline
        where = state.get("where")
        if state.get("key") != self.key or (where is not None and where != self.spec.where):
            # A state without "where" predates it: its tag key alone decides.
            self.sink.notice("rebaseline", self.role, "the tag or where it is read changed: "
                             "the next reading is a new baseline")
            self.sink.changed()
            return
        raw, pending = as_int(state.get("raw")), as_int(state.get("pending"))
        self.raw = raw if raw is not None and raw >= 0 else None
        self.pending = pending if self.raw is not None and pending is not None and pending >= 0 else None
        self._times(state, now)


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 20 else f"{value:.3e}"
