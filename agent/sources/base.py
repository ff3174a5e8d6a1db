"""The contract between the service and a protocol source (Modbus, OPC UA, MQTT, simulated).

A source is built with its connection's name, its validated connection config, the tags it
must read (deduplicated, each with the key its readings carry) and a `SourceContext`. Its
`run()` coroutine runs until cancelled and is the *only* place that reconnects for that
protocol: it connects, reads or subscribes, hands readings to `ctx.emit`, reports the
connection state through `ctx.connection_up/down`, and on a lost connection waits with
`agent.core.backoff.Backoff` and tries again. It never raises for a device fault; it raises only
for a bug. Sources know nothing of machines or Prodsmart.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from agent.core.model import Reading


@dataclass(frozen=True, slots=True)
class TagBinding:
    """A tag a source must read: the key its readings carry, and its protocol spec."""

    key: str
    spec: BaseModel
    # Roles this tag plays (counter, waste, delta, running, stop_reason, parameter), e.g. so a
    # source can treat delta counters specially; informative only.
    roles: tuple[str, ...] = ()


class Emit(Protocol):
    async def __call__(self, readings: Sequence[Reading], *, durable: bool = False) -> None:
        """Hand readings to the machine logic.

        With `durable=True` it returns only once their effect is committed to SQLite (use it
        before acknowledging a message that the publisher would not send again).
        """


@dataclass
class SourceContext:
    """What the service gives every source."""

    emit: Emit
    connection_up: Callable[[str], None]
    connection_down: Callable[[str, str], None]
    # secret(connection, field) -> value from the environment / credentials, or None.
    secret: Callable[[str, str], str | None]
    metrics: Any = None
    # The pipeline's group commit interval: how long a source may hold a batch (and the broker's
    # acknowledgements) to have one commit cover more of it.
    commit_interval: float = 0.2


class Source(Protocol):
    """A running protocol connection."""

    def __init__(
        self, name: str, config: Any, tags: Sequence[TagBinding], ctx: SourceContext
    ) -> None: ...

    async def run(self) -> None:
        """Read until cancelled; owns connect, reconnect with backoff, and state reports."""


SourceFactory = Callable[[str, Any, Sequence[TagBinding], SourceContext], Source]


def connection_env_name(connection: str, field: str) -> str:
    """Where a connection's secret is looked up: PRODSMART_EDGE_<CONNECTION>_<FIELD>, e.g.
    PRODSMART_EDGE_OVEN_PLC_PASSWORD (the environment; the systemd credential is its lower case)."""
    conn = re.sub(r"[^A-Za-z0-9]", "_", connection).upper()
    return f"PRODSMART_EDGE_{conn}_{field.upper()}"
