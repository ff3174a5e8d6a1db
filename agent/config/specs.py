"""The resolved configuration: frozen specs of the machines, their tags and the connections."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from agent.config.problems import Problem
from agent.config.sections import (
    HealthSection,
    LoggingSection,
    MetricsSection,
    ProdsmartSection,
    StorageSection,
)
from agent.core.model import Scalar
from agent.sources.base import TagBinding


@dataclass(frozen=True, slots=True)
class CounterSpec:
    tag: str
    mode: Literal["total", "delta"] = "total"
    modulus: int | None = None
    max_rate: float | None = None
    confirm_reset: bool = True
    # A signed register type (int16, int32...): a negative raw is read as the two's-complement
    # unsigned value of the width, so that 32767 -> -32768 is a wrap, not a bad value.
    signed: bool = False
    # Where the tag is read (connection name and address: host, port, unit...): with the tag key,
    # the counter's identity. A counter moved elsewhere starts a new baseline, its total kept.
    where: str = ""


@dataclass(frozen=True, slots=True)
class RunningSpec:
    tag: str
    running_values: tuple[Scalar, ...] | None = None
    invert: bool = False


@dataclass(frozen=True, slots=True)
class StopReasonSpec:
    tag: str | None
    types: Mapping[str, str]  # raw value as text -> downtime type
    default: str


@dataclass(frozen=True, slots=True)
class ParameterSpec:
    tag: str
    deadband: float = 0.0
    min_interval: float = 0.0
    max_interval: float | None = None
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True, slots=True)
class MachineSpec:
    code: str
    connection: str
    counter: CounterSpec | None = None
    waste: Mapping[str, CounterSpec] = field(default_factory=dict)
    running: RunningSpec | None = None
    stop_reason: StopReasonSpec = StopReasonSpec(None, {}, "Stopped")
    min_duration: float = 0.0
    idle_after: float | None = None
    idle_type: str = "No production"
    parameters: Mapping[str, ParameterSpec] = field(default_factory=dict)


def machine_tags(m: MachineSpec) -> list[tuple[str, str]]:
    """(role, tag key) of every tag a machine reads: "counter", "waste Scrap", "running",
    "stop_reason", "parameter temperature"."""
    pairs: list[tuple[str, str | None]] = [("counter", m.counter.tag if m.counter else None)]
    pairs += [(f"waste {code}", spec.tag) for code, spec in m.waste.items()]
    pairs += [("running", m.running.tag if m.running else None), ("stop_reason", m.stop_reason.tag)]
    pairs += [(f"parameter {code}", spec.tag) for code, spec in m.parameters.items()]
    return [(role, key) for role, key in pairs if key is not None]


def tag_roles(machines: Iterable[MachineSpec], connection: str,
              only: str | None = None) -> dict[str, list[str]]:
    """Tag key -> the "MACHINE role" labels it serves, for the machines of one connection."""
    roles: dict[str, list[str]] = {}
    for m in machines:
        if m.connection == connection and (only is None or m.code == only):
            for role, key in machine_tags(m):
                roles.setdefault(key, []).append(f"{m.code} {role}")
    return roles


@dataclass(frozen=True, slots=True)
class ConnectionSpec:
    name: str
    protocol: str
    config: BaseModel
    tags: Mapping[str, TagBinding]  # by key


@dataclass(frozen=True, slots=True)
class AgentConfig:
    path: str
    prodsmart: ProdsmartSection
    storage: StorageSection
    metrics: MetricsSection
    health: HealthSection
    logging: LoggingSection
    connections: Mapping[str, ConnectionSpec]
    machines: Mapping[str, MachineSpec]
    warnings: tuple[Problem, ...] = ()  # usable, but probably not what was meant (`check` shows them)


def _text(value: Scalar) -> str:
    """Canonical text of a raw value, so that 1, 1.0 and "1" map to the same reason."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def reason_key(value: Scalar) -> str:
    """The key under which a raw stop-reason value is looked up in `StopReasonSpec.types`."""
    return _text(value)
