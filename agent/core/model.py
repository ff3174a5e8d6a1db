"""The values that travel between stages: readings (source -> logic) and events (logic -> outbox)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

Scalar = float | int | bool | str


class Quality(enum.Enum):
    """How far a reading can be trusted; only GOOD readings change the machine logic's state."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one tag, as a source saw it.

    `tag` is the tag's key (`TagBinding.key`), unique within its connection. Sources know
    nothing of machines: the machine logic maps (connection, tag) to machine roles.
    `msg_id` is set by sources whose messages carry an id (MQTT deltas), for de-duplication.
    `redelivered` marks a message the transport delivered again (MQTT DUP).
    """

    connection: str
    tag: str
    value: Scalar | None
    quality: Quality = Quality.GOOD
    source_time: float | None = None
    received_time: float = 0.0
    msg_id: str | None = None
    error: str | None = None
    # The transport delivered it again (MQTT DUP) and cannot tell whether it was applied: an
    # old total of a message committed just before a crash must not look like a counter reset.
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class CounterChanged:
    """New cumulative totals of a machine (without the operator offset).

    `count` is None when only waste grew. `waste` holds only the codes whose totals grew.
    """

    machine: str
    count: int | None
    waste: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunStateChanged:
    """A debounced run-state transition; `type` is the downtime type it opens or closes."""

    machine: str
    running: bool
    type: str


@dataclass(frozen=True, slots=True)
class ParametersChanged:
    """Process values that passed their deadband / interval filters, by parameter code."""

    machine: str
    values: Mapping[str, Scalar]


Event = CounterChanged | RunStateChanged | ParametersChanged


def compact(events: list[Event]) -> list[Event]:
    """The same effect in fewer events, for holding them in memory while the database cannot
    take them: a machine's consecutive counter events merge (totals are cumulative), never
    across one of its run-state changes; parameter values keep the newest per code."""
    out: list[Event] = []
    open_counter: dict[str, int] = {}  # machine -> index in `out` of its mergeable counter event
    params: dict[str, int] = {}
    for event in events:
        if isinstance(event, RunStateChanged):
            open_counter.pop(event.machine, None)
            out.append(event)
        elif isinstance(event, CounterChanged) and event.machine in open_counter:
            i = open_counter[event.machine]
            old = out[i]
            assert isinstance(old, CounterChanged)
            count = event.count if event.count is not None else old.count
            out[i] = CounterChanged(event.machine, count, {**old.waste, **event.waste})
        elif isinstance(event, ParametersChanged) and event.machine in params:
            i = params[event.machine]
            old_params = out[i]
            assert isinstance(old_params, ParametersChanged)
            out[i] = ParametersChanged(event.machine, {**old_params.values, **event.values})
        else:
            index = {CounterChanged: open_counter, ParametersChanged: params}[type(event)]
            index[event.machine] = len(out)
            out.append(event)
    return out
