"""How one machine's events become queued calls: coalescing, offsets and the never-backwards guard.

Pure and synchronous (the outbox feeds it rows and writes back what it returns), so that the
rules of docs/design.md "Order and coalescing" live in one small, testable place:
- a counter event merges into the newest queued counter call of its machine, unless a
  startstop call was queued after it or it was already attempted (its body is frozen);
- a count or waste quantity never goes out unless it is greater than the last one
  Prodsmart acknowledged;
- with `waste_without_count="hold"`, waste that grew without the count waits (held) and rides
  on the next call that carries a count.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

Kind = Literal["counter", "startstop", "parameters"]


@dataclass(slots=True)
class LaneCall:
    """A counter or startstop call while a commit builds it (`id` None: not stored yet)."""

    id: int | None
    kind: Kind
    created: float
    count: int | None = None
    waste: dict[str, int] = field(default_factory=dict)
    running: bool | None = None
    type: str | None = None
    frozen: bool = False  # attempted: the retry must carry the same body
    dirty: bool = False


@dataclass(frozen=True, slots=True)
class Acked:
    """What Prodsmart is known to hold for one machine."""

    count: int | None = None
    waste: Mapping[str, int] = field(default_factory=dict)


def greater_only(
    count: int | None, waste: Mapping[str, int], acked: Acked
) -> tuple[int | None, dict[str, int], list[str]]:
    """Keep only the fields that are greater than what Prodsmart holds; name what was dropped."""
    dropped: list[str] = []
    if count is not None and acked.count is not None and count <= acked.count:
        dropped.append(f"count {count} <= {acked.count}")
        count = None
    kept: dict[str, int] = {}
    for code, qty in waste.items():
        last = acked.waste.get(code)
        if last is not None and qty <= last:
            dropped.append(f"waste {code} {qty} <= {last}")
        else:
            kept[code] = qty
    return count, kept, dropped


class Lane:
    """One machine's queue tail during a commit; `add_*` apply events in their order."""

    def __init__(
        self,
        machine: str,
        tail: LaneCall | None,
        *,
        offset: int,
        acked: Acked,
        held: Mapping[str, int],
        hold: bool,
        now: float,
        waste_offsets: Mapping[str, int] | None = None,
    ) -> None:
        self.machine = machine
        self.tail = tail
        self._stored = tail  # the only stored call a commit may change
        self.offset = offset
        self.waste_offsets = waste_offsets or {}  # per waste code, set by `rebase`
        self.acked = acked
        self.held = dict(held)
        self.held_changed = False
        self.hold = hold
        self.now = now
        self.new: list[LaneCall] = []
        self.last_total: int | None = None
        self.dropped: list[str] = []

    def add_counter(self, total: int | None, waste: Mapping[str, int]) -> None:
        if total is not None:
            self.last_total = total
        count = None if total is None else self.offset + total
        if self.waste_offsets:
            waste = {c: q + self.waste_offsets.get(c, 0) for c, q in waste.items()}
        count, kept, dropped = greater_only(count, waste, self.acked)
        self.dropped += dropped
        if count is None and not kept:
            return
        if self.hold:
            if count is None and not self._open_tail_has_count():
                self.held.update(kept)
                self.held_changed = True
                return
            if count is not None and self.held:
                kept = {**self.held, **kept}  # the event's quantities are the newer ones
                self.held = {}
                self.held_changed = True
        self._place(count, kept)

    def add_runstate(self, running: bool, type_: str) -> None:
        call = LaneCall(None, "startstop", self.now, running=running, type=type_)
        self.new.append(call)
        self.tail = call

    def _open_tail_has_count(self) -> bool:
        tail = self.tail
        return tail is not None and tail.kind == "counter" and not tail.frozen and tail.count is not None

    def _place(self, count: int | None, waste: Mapping[str, int]) -> None:
        tail = self.tail
        if tail is not None and tail.kind == "counter" and not tail.frozen:
            if count is not None:
                tail.count = count
            tail.waste.update(waste)
            tail.dirty = True
            return
        call = LaneCall(None, "counter", self.now, count=count, waste=dict(waste))
        self.new.append(call)
        self.tail = call

    def updated(self) -> list[LaneCall]:
        """Stored calls whose body changed (the tail it merged into)."""
        stored = self._stored
        return [stored] if stored is not None and stored.id is not None and stored.dirty else []


def counter_body(
    count: int | None, waste: Mapping[str, int], parameters: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON body of a counter call; parameters here are {"name", "value"}."""
    body: dict[str, Any] = {}
    if count is not None:
        body["count"] = count
    if waste:
        body["waste"] = [{"code": c, "quantity": q} for c, q in sorted(waste.items())]
    if parameters:
        body["parameters"] = [{"name": n, "value": v} for n, v in sorted(parameters.items())]
    return body


def parameters_body(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of a parameters call; parameters here are {"code", "value"}."""
    return {"parameters": [{"code": c, "value": v} for c, v in sorted(parameters.items())]}


def startstop_body(running: bool, type_: str) -> dict[str, Any]:
    return {"type": type_, "running": 1 if running else 0}


def parse_counter_body(body: Mapping[str, Any]) -> tuple[int | None, dict[str, int], dict[str, Any]]:
    """count, waste and parameters of a counter body (the inverse of `counter_body`)."""
    count = body.get("count")
    waste = {str(w["code"]): int(w["quantity"]) for w in body.get("waste", [])}
    params = {str(p["name"]): p["value"] for p in body.get("parameters", [])}
    return (int(count) if count is not None else None), waste, params
