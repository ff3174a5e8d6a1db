"""Machine state (counters, run states, parameters) with its rules, and the ledger of every request."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

from agent.sandbox.calls import CounterCall, ParametersCall, Refused, StartStopCall
from agent.sandbox.options import SandboxOptions

Record = dict[str, Any]


@dataclass(frozen=True)
class Ledger:
    """A consistent snapshot of everything the sandbox received and applied.

    accepted: every applied call in arrival order: seq, time, machine, endpoint, body, auth
        ("basic" | "token"), client (the API key), fault (the fault kind that hit it, or None),
        repeated (a startstop for a machine already in that state), ignored (parts left out under
        repeat_count=ignore).
    rejected: every answered 4xx/5xx: seq, time, machine, endpoint, status, reason, body.
    faulted: every request a fault hit: seq, time, machine, endpoint, kind, applied, body.
    counters[machine]: {"count": int | None, "waste": {code: int}}.
    runs[machine]: the run-state transitions applied: {seq, time, running, type}.
    repeats[machine]: startstop calls accepted for a machine already in that state.
    downtimes[machine]: {type, start, end (None while open)}.
    parameters[machine]: {name or code: last value}.
    statuses: how many API requests got each status ("200", "429"...), "dropped" for aborted ones.
    authorizations: every /authorization request: seq, time, method, status (None if dropped).
    other_integrations: requests of the company's other integrations (simulated): admitted, refused.
    """

    accepted: list[Record]
    rejected: list[Record]
    faulted: list[Record]
    counters: dict[str, Record]
    runs: dict[str, list[Record]]
    repeats: dict[str, list[Record]]
    downtimes: dict[str, list[Record]]
    parameters: dict[str, Record]
    statuses: dict[str, int]
    authorizations: list[Record]
    other_integrations: dict[str, int] = field(default_factory=lambda: {"admitted": 0, "refused": 0})

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ledger:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


class Book:
    """The mutable state behind a Ledger; not thread-safe (the Company holds the lock)."""

    def __init__(self) -> None:
        self.ledger = Ledger([], [], [], {}, {}, {}, {}, {}, {}, [])
        self._open: dict[str, Record] = {}

    def snapshot(self) -> Ledger:
        """A copy for another thread. Log entries are never changed once written, so a shallow
        copy of each is enough (bodies are shared: read them, do not change them); a deep copy of
        a long run's ledger would hold the lock for too long."""
        led = self.ledger
        accepted, rejected, faulted, authorizations = (
            [dict(e) for e in log] for log in (led.accepted, led.rejected, led.faulted, led.authorizations))
        state = copy.deepcopy((led.counters, led.runs, led.repeats, led.downtimes, led.parameters))
        return Ledger(accepted, rejected, faulted, *state, dict(led.statuses), authorizations)

    def status(self, status: int | str) -> None:
        key = str(status)
        self.ledger.statuses[key] = self.ledger.statuses.get(key, 0) + 1

    def reject(self, entry: Record, status: int, reason: str) -> None:
        self.ledger.rejected.append({**_base(entry), "status": status, "reason": reason})

    def faulted(self, entry: Record, kind: str, applied: bool) -> None:
        self.ledger.faulted.append({**_base(entry), "kind": kind, "applied": applied})

    def counter(self, machine: str, call: CounterCall, options: SandboxOptions, entry: Record) -> Record:
        """Check the whole call first, so that a refused call changes nothing; then apply it."""
        state = self.ledger.counters.get(machine, {"count": None, "waste": {}})
        ignored: list[str] = []
        problems: list[str] = []
        if call.count is not None:
            self._check(call.count, state["count"], "count", "count", options, problems, ignored)
        for code, quantity in call.waste:
            self._check(quantity, state["waste"].get(code), f"waste {code!r} quantity",
                        f"waste:{code}", options, problems, ignored)
        if problems:
            raise Refused(400, "; ".join(problems))
        state = self.ledger.counters.setdefault(machine, state)
        if call.count is not None and "count" not in ignored:
            state["count"] = call.count
        for code, quantity in call.waste:
            state["waste"][code] = quantity
        self._set_parameters(machine, call.parameters)
        self._accept(entry, ignored=ignored)
        return {"machine": machine, "count": state["count"], "waste": dict(state["waste"])}

    def parameters(self, machine: str, call: ParametersCall, entry: Record) -> Record:
        self._set_parameters(machine, call.parameters)
        self._accept(entry)
        return {"machine": machine, "parameters": dict(self.ledger.parameters[machine])}

    def startstop(self, machine: str, call: StartStopCall, options: SandboxOptions, entry: Record) -> Record:
        types = options.types_of(machine) or []
        if call.type not in types:
            raise Refused(400, f"downtime type {call.type!r} is not assigned to machine {machine}")
        # A machine with no open downtime is running, also before its first call.
        stopped = machine in self._open
        repeated = stopped == (call.running == 0)
        if repeated and options.repeat_running == "reject":
            raise Refused(400, f"machine {machine} is already {'stopped' if stopped else 'running'}")
        change = {"seq": entry["seq"], "time": entry["time"], "running": call.running, "type": call.type}
        if repeated:
            # Undocumented case: the first downtime stays open, as it was.
            self.ledger.repeats.setdefault(machine, []).append(change)
        elif call.running == 0:
            downtime = {"type": call.type, "start": entry["time"], "end": None}
            self.ledger.downtimes.setdefault(machine, []).append(downtime)
            self._open[machine] = downtime
            self.ledger.runs.setdefault(machine, []).append(change)
        else:
            self._open.pop(machine)["end"] = entry["time"]
            self.ledger.runs.setdefault(machine, []).append(change)
        self._accept(entry, repeated=repeated)
        return {"machine": machine, "running": 0 if machine in self._open else 1}

    @staticmethod
    def _check(new: int, last: int | None, what: str, part: str, options: SandboxOptions,
               problems: list[str], ignored: list[str]) -> None:
        if last is None or new > last:
            return
        if new == last and options.repeat_count == "ignore":
            ignored.append(part)
        else:
            problems.append(f"{what} {new} is not greater than the last {what} {last}")

    def _set_parameters(self, machine: str, values: tuple[tuple[str, Any], ...]) -> None:
        if values:
            self.ledger.parameters.setdefault(machine, {}).update(values)

    def _accept(self, entry: Record, repeated: bool = False, ignored: list[str] | None = None) -> None:
        self.ledger.accepted.append({**entry, "repeated": repeated, "ignored": ignored or []})


def _base(entry: Record) -> Record:
    return {k: entry[k] for k in ("seq", "time", "machine", "endpoint", "body")}
