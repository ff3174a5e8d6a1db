"""The machine logic: readings in, events out; pure, synchronous and deterministic (time is passed in).

`Logic.apply(reading, now)` routes a reading by (connection, tag key) to every machine role
bound to it and returns the events it caused; `Logic.tick(now)` returns the events that time
alone causes (debounce, idle, parameter intervals). The rules live in the role modules:
`counter` (totals), `runstate` (run states), `parameter` (parameters).

Events of one machine come out in the order they happened: a run-state change that became
due before a reading goes out before that reading's counts, and a start caused by counting
again after idle goes out before the count. One `apply()` gives at most one `CounterChanged`
and one `ParametersChanged` per machine.

State: `dirty_states()` returns, per machine whose state changed, a JSON-serialisable dict
(`{"v": 1, "counters": {role: ...}, "run": {...}}`) that the outbox stores in the same
transaction as the calls; `Logic(machines, states)` resumes from it. Counter roles that a
new configuration no longer has are kept in the state, so that their totals resume if the
role comes back.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from agent.config.specs import MachineSpec
from agent.core.model import CounterChanged, Event, ParametersChanged, Reading
from agent.logic.common import INF, Notice, Sink
from agent.logic.counter import DEDUPE_IDS, Counter
from agent.logic.parameter import Parameter
from agent.logic.runstate import RunState

__all__ = ["DEDUPE_IDS", "STATE_VERSION", "Logic", "Notice"]

STATE_VERSION = 1

Feed = Callable[[Reading, float], None]


class _Machine:
    """One machine: its roles, its sink and its place in the deadline heap."""

    __slots__ = ("code", "count", "extra", "extra_run", "heap_at", "params", "run", "sink", "spec", "waste")

    def __init__(self, code: str, spec: MachineSpec, state: Any, notices: list[Notice],
                 dirty: set[str], now: float | None, floors: Mapping[str, int]) -> None:
        self.code = code
        self.spec = spec
        self.sink = sink = Sink(code, notices, dirty)
        usable = isinstance(state, dict) and isinstance(state.get("counters", {}), dict)
        if state is not None and not usable:
            sink.notice("state_invalid", "", "the stored state is not usable: starting fresh")
            state = None
        saved: dict[str, Any] = dict(state.get("counters", {})) if state else {}
        count = saved.pop("count", None)
        self.count = (Counter(sink, "count", spec.counter, count, now, floors.get("count", 0))
                      if spec.counter else None)
        self.waste = {c: Counter(sink, f"waste:{c}", s, saved.pop(f"waste:{c}", None), now,
                                 floors.get(f"waste:{c}", 0))
                      for c, s in spec.waste.items()}
        self.extra = saved  # roles this configuration lacks: kept so their totals resume
        has_run = spec.running is not None or (spec.idle_after is not None and spec.counter is not None)
        run_state = state.get("run") if state else None
        self.run = RunState(sink, spec, run_state, now) if has_run else None
        self.extra_run = None if has_run else run_state
        self.params = {c: Parameter(sink, c, p) for c, p in spec.parameters.items()}
        self.heap_at = INF  # the time of this machine's live heap entry

    def feeds(self) -> Iterator[tuple[str, Feed]]:
        """(tag key, handler) for every role."""
        if self.count is not None:
            yield self.count.spec.tag, self.count.feed
        for counter in self.waste.values():
            yield counter.spec.tag, counter.feed
        if self.run is not None:
            if self.spec.stop_reason.tag is not None:
                yield self.spec.stop_reason.tag, self.run.feed_reason
            if self.spec.running is not None:
                yield self.spec.running.tag, self.run.feed_running
        for param in self.params.values():
            yield param.spec.tag, param.feed

    def deadline(self) -> float:
        due = self.run.next_deadline() if self.run is not None else INF
        for param in self.params.values():
            due = min(due, param.next_deadline())
        return due

    def dump(self) -> dict[str, Any]:
        counters = dict(self.extra)
        if self.count is not None:
            counters["count"] = self.count.dump()
        for code, counter in self.waste.items():
            counters[f"waste:{code}"] = counter.dump()
        state: dict[str, Any] = {"v": STATE_VERSION, "counters": counters}
        run = self.run.dump() if self.run is not None else self.extra_run
        if run is not None:
            state["run"] = run
        return state


class _Target:
    """Everything one (connection, tag key) feeds."""

    __slots__ = ("handlers", "machines")

    def __init__(self, handlers: list[tuple[_Machine, Feed]]) -> None:
        self.handlers = tuple(feed for _, feed in handlers)
        self.machines = tuple(dict.fromkeys(m for m, _ in handlers))


class Logic:
    """The machine logic of every configured machine."""

    def __init__(self, machines: Mapping[str, MachineSpec],
                 states: Mapping[str, dict[str, Any]] | None = None, now: float | None = None,
                 floors: Mapping[str, Mapping[str, int]] | None = None) -> None:
        """`now`: given when the states come from a Logic of this same process (a reload), so
        that the times in them (a debounce under way) are of the same clock and carry over.
        `floors`: per machine and counter role, the total the outbox knows was counted or
        acknowledged (`Outbox.known_totals`): a total never resumes below it."""
        self._specs = machines
        self._notices: list[Notice] = []
        self._dirty: set[str] = set()
        self._heap: list[tuple[float, str]] = []
        self._armed = False
        self._machines: dict[str, _Machine] = {}
        bindings: dict[tuple[str, str], list[tuple[_Machine, Feed]]] = {}
        for code, spec in machines.items():
            m = _Machine(code, spec, (states or {}).get(code), self._notices, self._dirty, now,
                         (floors or {}).get(code, {}))
            self._machines[code] = m
            for key, feed in m.feeds():
                bindings.setdefault((spec.connection, key), []).append((m, feed))
        self._route: dict[str, dict[str, _Target]] = {}
        for (connection, key), handlers in bindings.items():
            self._route.setdefault(connection, {})[key] = _Target(handlers)

    def machines(self) -> Mapping[str, MachineSpec]:
        return self._specs

    def apply(self, reading: Reading, now: float) -> list[Event]:
        """The events one reading causes (usually none or one)."""
        tags = self._route.get(reading.connection)
        target = tags.get(reading.tag) if tags is not None else None
        if target is None:
            return []
        if not self._armed:
            self._arm(now)
        out: list[Event] = []
        for m in target.machines:
            run = m.run
            if run is not None and run.due < now:  # it happened before this reading
                run.advance(now, out)
                m.sink.wake_at(m.deadline())
        for feed in target.handlers:
            feed(reading, now)
        for m in target.machines:
            self._flush(m, now, out)
        return out

    def tick(self, now: float) -> list[Event]:
        """The events time alone causes at `now`; cheap when nothing is due."""
        if not self._armed:
            self._arm(now)
        heap = self._heap
        if not heap or heap[0][0] > now:
            return []
        due: list[_Machine] = []
        while heap and heap[0][0] <= now:
            at, code = heapq.heappop(heap)
            m = self._machines[code]
            if at == m.heap_at:  # else an earlier entry superseded it
                m.heap_at = INF
                due.append(m)
        out: list[Event] = []
        for m in due:  # each once, so a deadline that is already due again waits for the next tick
            if m.run is not None:
                m.run.advance(now, out)
            for param in m.params.values():
                param.fire(now)
            m.sink.wake_at(m.deadline())
            self._flush(m, now, out)
        return out

    def connection(self, name: str, up: bool, now: float) -> None:
        """A connection went down or came back: idle detection of its machines pauses meanwhile."""
        if not self._armed:
            self._arm(now)
        for m in self._machines.values():
            if m.spec.connection == name and m.run is not None:
                m.run.sight(now, down=not up)
                if m.sink.wake < m.heap_at:
                    self._schedule(m)
                m.sink.wake = INF

    def dirty_states(self) -> dict[str, dict[str, Any]]:
        """The states of machines changed since the last call (JSON-serialisable)."""
        states = {code: self._machines[code].dump() for code in self._dirty}
        self._dirty.clear()
        return states

    def drain_delta_ids(self) -> list[tuple[str, str, str]]:
        """(machine, role, message id) of every delta message counted since the last call."""
        out: list[tuple[str, str, str]] = []
        for code, m in self._machines.items():
            for counter in (m.count, *m.waste.values()):
                if counter is not None and counter.fresh:
                    out.extend((code, counter.role, i) for i in counter.drain_ids())
        return out

    def glance(self) -> Iterator[tuple[str, int | None, bool | None, str | None]]:
        """Per machine: count total, the run state Prodsmart was told (None: unknown or no run
        state) and its downtime type. Cheap: the console samples it every few seconds."""
        for code, m in self._machines.items():
            run = m.run
            known = run is not None and (run.stable is not None or run.idle)
            yield (code, m.count.total if m.count is not None else None,
                   run.sent if known and run is not None else None,
                   run.sent_type if known and run is not None and not run.sent else None)

    def inspect(self, code: str) -> dict[str, Any] | None:
        """One machine's inner state as plain values (for the console): counters and run state."""
        m = self._machines.get(code)
        if m is None:
            return None
        counters = [c for c in (m.count, *m.waste.values()) if c is not None]
        run = m.run
        return {
            "counters": {c.role: {"tag": c.key, "mode": c.spec.mode, "total": c.total, "baseline": c.raw,
                                  "pending_reset": c.pending, "baseline_time": c.wall} for c in counters},
            "run": None if run is None else {
                "running": run.stable, "sent": run.sent, "type": run.sent_type, "idle": run.idle,
                "reason": run.reason, "candidate": run.cand},
        }

    def all_states(self) -> dict[str, dict[str, Any]]:
        """The state of every machine, dirty or not (to hand over to the next Logic on a reload),
        with each delta counter's recent message ids: the next Logic still knows a redelivery."""
        out: dict[str, dict[str, Any]] = {}
        for code, m in self._machines.items():
            state = out[code] = m.dump()
            for counter in (m.count, *m.waste.values()):
                if counter is not None and counter.ids:
                    state["counters"][counter.role]["ids"] = list(counter.ids)
        return out

    def drain_notices(self) -> list[Notice]:
        notices = self._notices[:]
        self._notices.clear()
        return notices

    # ------------------------------------------------------------------ internals

    def _arm(self, now: float) -> None:
        """The first call brings the first time: idle clocks start."""
        self._armed = True
        for m in self._machines.values():
            if m.run is not None:
                m.run.arm(now)
                self._schedule(m)

    def _flush(self, m: _Machine, now: float, out: list[Event]) -> None:
        """Turn what the roles reported into events; schedule new deadlines."""
        sink = m.sink
        if sink.count_unread is not None:  # the count became readable or unreadable
            if m.run is not None:
                m.run.sight(now, unread=sink.count_unread)
            sink.count_unread = None
        if sink.count_grew or sink.waste_grew:
            count = None
            if sink.count_grew:
                sink.count_grew = False
                assert m.count is not None
                count = m.count.total
                if m.run is not None:
                    m.run.growth(now, out)  # a start after idle goes before the count
            waste = {}
            if sink.waste_grew:
                waste = {code: m.waste[code].total for code in sink.waste_grew}
                sink.waste_grew.clear()
            out.append(CounterChanged(m.code, count, waste))
        if sink.params is not None:
            out.append(ParametersChanged(m.code, sink.params))
            sink.params = None
        if sink.wake < m.heap_at:
            self._schedule(m)
        sink.wake = INF

    def _schedule(self, m: _Machine) -> None:
        when = m.sink.wake
        m.sink.wake = INF
        if when < m.heap_at:
            m.heap_at = when
            heapq.heappush(self._heap, (when, m.code))
