"""The console's history in bounded memory: run-state segments, counts and calls per minute.

Sampled every few seconds from what the agent already holds in memory (the machine logic's
totals and run states, the uplink's journal): nothing is added to the commit path, and the
cost is a few dictionary look-ups per machine per sample.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

SAMPLE_EVERY = 2.0  # seconds between samples
KEEP_MINUTES = 240  # per-minute counts and calls kept: the last 4 hours
KEEP_SEGMENTS = 720  # run-state segments kept per machine (a machine flapping every 20 s fills 4 h)
SHARES_FRESH = 10.0  # seconds a machine's last-hour bar is reused before it is summed again

Glance = tuple[str, int | None, bool | None, str | None]  # code, count total, running, downtime type


def _minute(now: float) -> float:
    return float(int(now // 60) * 60)


class Minutes:
    """A ring of per-minute buckets `[minute start, a, b]`, the newest last."""

    __slots__ = ("buckets",)

    def __init__(self, keep: int = KEEP_MINUTES) -> None:
        self.buckets: deque[list[float]] = deque(maxlen=keep)

    def add(self, now: float, a: float = 0, b: float = 0) -> None:
        minute = _minute(now)
        buckets = self.buckets
        if buckets and buckets[-1][0] == minute:
            last = buckets[-1]
            last[1] += a
            last[2] += b
            return
        if buckets and buckets[-1][0] < minute:  # minutes without a sample (a pause): zeros
            gap = min(int((minute - buckets[-1][0]) // 60) - 1, buckets.maxlen or 0)
            start = minute - 60 * gap
            buckets.extend([start + 60 * i, 0.0, 0.0] for i in range(gap))
        buckets.append([minute, float(a), float(b)])

    def rows(self) -> list[list[float]]:
        return [list(b) for b in self.buckets]


class Segment:
    """A stretch of one run state (and downtime type)."""

    __slots__ = ("end", "kind", "start", "state")

    def __init__(self, start: float, state: str, kind: str | None) -> None:
        self.start = self.end = start
        self.state = state
        self.kind = kind

    def row(self) -> list[object]:
        return [self.start, self.end, self.state, self.kind]


class MachineHistory:
    """One machine: its run-state segments `[start, end, state, type]` and counts read vs delivered."""

    __slots__ = ("_shares", "delivered", "minutes", "segments", "total")

    def __init__(self, delivered: int | None) -> None:
        self.segments: deque[Segment] = deque(maxlen=KEEP_SEGMENTS)
        self.minutes = Minutes()
        self.total: int | None = None
        self.delivered = delivered
        self._shares: tuple[float, list[list[object]]] = (-SHARES_FRESH, [])

    def since(self) -> float | None:
        """When the current run state began (as far as this history knows)."""
        return self.segments[-1].start if self.segments else None

    def shares(self, now: float, window: float = 3600.0) -> list[list[object]]:
        """Seconds per (state, downtime type) within the last `window`, longest first (summed
        again at most every SHARES_FRESH seconds: an open page asks every 1.5 s)."""
        at, rows = self._shares
        if 0 <= now - at < SHARES_FRESH:
            return rows
        since = now - window
        seconds: dict[tuple[str, str | None], float] = {}
        for s in reversed(self.segments):
            if s.end <= since:
                break
            key = (s.state, s.kind)
            seconds[key] = seconds.get(key, 0.0) + min(s.end, now) - max(s.start, since)
        ordered = sorted(seconds.items(), key=lambda kv: -kv[1])
        rows = [[state, kind, round(secs, 1)] for (state, kind), secs in ordered]
        self._shares = (now, rows)
        return rows

    def observe(self, now: float, total: int | None, running: bool | None, kind: str | None,
                delivered: int | None, keep_seconds: float) -> None:
        read = 0
        if total is not None:
            if self.total is not None and total > self.total:
                read = total - self.total
            self.total = total
        sent = 0
        if delivered is not None:
            if self.delivered is not None and delivered > self.delivered:
                sent = delivered - self.delivered
            self.delivered = delivered
        self.minutes.add(now, read, sent)
        state = "unknown" if running is None else "running" if running else "stopped"
        segments = self.segments
        last = segments[-1] if segments else None
        if last is not None:
            last.end = now
        if last is None or last.state != state or last.kind != kind:
            segments.append(Segment(now, state, kind))
        while len(segments) > 1 and segments[0].end < now - keep_seconds:
            segments.popleft()


class History:
    """Every machine's history and the calls a minute, fed by `sample()`."""

    def __init__(self, keep_minutes: int = KEEP_MINUTES) -> None:
        self.keep_seconds = keep_minutes * 60.0
        self.machines: dict[str, MachineHistory] = {}
        self.calls = Minutes(keep_minutes)
        self._sent: int | None = None
        self.seed: Mapping[str, int] = {}  # what Prodsmart held at start (from the database)

    def sample(self, now: float, glance: Iterable[Glance], delivered: Mapping[str, int], sent: int) -> None:
        seen = set()
        for code, total, running, kind in glance:
            seen.add(code)
            h = self.machines.get(code)
            if h is None:
                h = self.machines[code] = MachineHistory(self.seed.get(code, 0))
            h.observe(now, total, running, kind, delivered.get(code), self.keep_seconds)
        for code in [c for c in self.machines if c not in seen]:  # removed by a reload
            del self.machines[code]
        new = 0 if self._sent is None else max(0, sent - self._sent)
        self._sent = sent
        self.calls.add(now, new)
