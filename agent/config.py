"""The agent's configuration: YAML tag map in, validated frozen specs out, every error with file:line.

`load_config(path)` raises `ConfigError` carrying *all* problems found, each with the file,
the line and the key path, so a technician fixes a tag map in one pass. The specs it builds
are defined in `agent.specs` and re-exported here.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from agent.confbase import Duration, Strict, counter_modulus
from agent.model import Scalar
from agent.sources.base import TagBinding
from agent.sources.registry import PROTOCOLS
from agent.specs import AgentConfig as AgentConfig
from agent.specs import ConnectionSpec as ConnectionSpec
from agent.specs import CounterSpec as CounterSpec
from agent.specs import MachineSpec as MachineSpec
from agent.specs import ParameterSpec as ParameterSpec
from agent.specs import RunningSpec as RunningSpec
from agent.specs import StopReasonSpec as StopReasonSpec
from agent.specs import _text
from agent.specs import machine_tags as machine_tags
from agent.specs import reason_key as reason_key
from agent.specs import tag_roles as tag_roles
from agent.yamlpos import Located, YamlError, load_yaml

KeyPath = tuple[str | int, ...]


# --------------------------------------------------------------------------- sections


class Paths(Strict):
    """Endpoint paths; `{machine}` is replaced by the URL-encoded machine code."""

    counter: str = "/api/machines/{machine}/counter"
    parameters: str = "/api/machines/{machine}/parameters"
    startstop: str = "/api/machines/{machine}/startstop"
    authorization: str = "/api/authorization"


class ProdsmartSection(Strict):
    url: str = "https://app.prodsmart.com"
    auth: Literal["basic", "token"] = "basic"
    requests_per_minute: float = Field(default=100, gt=0, le=120)
    timeout: Duration = 15.0
    paths: Paths = Paths()
    # Prodsmart does not document whether a waste-only counter call needs `count`.
    waste_without_count: Literal["send", "hold"] = "send"
    # The body of a 400 is not documented: how to recognise "count not increasing".
    not_increasing_pattern: str = r"(?i)(increas|greater|higher|previous|last)"
    retry_min: Duration = 1.0
    retry_max: Duration = 300.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must start with http:// or https:// and name a host")
        return value.rstrip("/")

    @field_validator("not_increasing_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        re.compile(value)
        return value


class StorageSection(Strict):
    path: str = "/var/lib/prodsmart-edge/agent.db"
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    commit_interval: Duration = 0.2
    max_size_mb: float = Field(default=256, gt=0)


class MetricsSection(Strict):
    enabled: bool = True
    listen: str = "127.0.0.1:9108"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9108")
        return value


class HealthSection(Strict):
    max_connection_down: Duration = 300.0
    max_pending_age: Duration = 900.0


class LoggingSection(Strict):
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


# --------------------------------------------------------------------------- tag roles

COUNTER_ROLE_KEYS = {"mode", "max_rate", "modulus", "confirm_reset"}
RUNNING_ROLE_KEYS = {"running_values", "invert"}
PARAMETER_ROLE_KEYS = {"deadband", "min_interval", "max_interval", "scale", "offset"}


class _CounterRole(Strict):
    mode: Literal["total", "delta"] = "total"
    max_rate: float | None = Field(None, gt=0)
    modulus: int | None = Field(None, ge=2)
    confirm_reset: bool = True


class _RunningRole(Strict):
    running_values: list[Scalar] | None = None
    invert: bool = False


class _ParameterRole(Strict):
    deadband: float = Field(0.0, ge=0)
    min_interval: Duration = 0.0
    max_interval: Duration | None = None
    scale: float = 1.0
    offset: float = 0.0


class _StopReason(Strict):
    tag: dict[str, Any] | None = None
    types: dict[Scalar, str] = Field(default_factory=dict)
    default: str = "Stopped"


class _Machine(Strict):
    connection: str
    counter: dict[str, Any] | None = None
    waste: dict[str, dict[str, Any]] = Field(default_factory=dict)
    running: dict[str, Any] | None = None
    stop_reason: _StopReason | None = None
    min_duration: Duration = 0.0
    idle_after: Duration | None = None
    idle_type: str = "No production"
    parameters: dict[str, dict[str, Any]] = Field(default_factory=dict)


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every reason, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line or 0, p.path))
        super().__init__("\n".join(str(p) for p in self.problems))


def _dotted(path: KeyPath) -> str:
    return ".".join(str(p) for p in path)


class _Collector:
    """Gathers problems for one file, locating each key path in the YAML."""

    def __init__(self, file: str, located: Located) -> None:
        self.file = file
        self.located = located
        self.problems: list[Problem] = []

    def add(self, path: KeyPath, message: str) -> None:
        line = self.located.line_of(path)
        self.problems.append(Problem(self.file, line, _dotted(path), message))

    def validate(self, model: type[BaseModel], data: Any, path: KeyPath) -> Any:
        """Validate `data` at `path`; record every error and return None on failure."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
                self.add((*path, *loc), _explain(err, model, loc))
            return None


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model owning the last key of `loc` (for did-you-mean suggestions)."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(str(part))
        current = info.annotation if info is not None else None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _explain(err: Any, model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    if err["type"] == "extra_forbidden":
        owner = _model_at(model, loc)
        key = str(loc[-1]) if loc else ""
        known = list(owner.model_fields) if owner is not None else []
        return unknown_key_message(key, known)
    if err["type"] == "missing":
        return "required key is missing"
    message = str(err["msg"]).removeprefix("Value error, ")
    given = err.get("input")
    if isinstance(given, (str, int, float, bool)) and err["type"] != "missing":
        message += f" (got {given!r})"
    return message


def unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}"


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a config file; raise `ConfigError` with every problem found."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(file, None, "", f"cannot read the file: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(file, None, "", "the file is not UTF-8 text")]) from None
    return parse_config(text, file)


def parse_config(text: str, file: str = "<config>") -> AgentConfig:
    try:
        located = load_yaml(text)
    except YamlError as exc:
        raise ConfigError([Problem(file, exc.line, "", exc.message)]) from None
    if not isinstance(located.data, dict):
        raise ConfigError([Problem(file, 1, "", "the file must be a mapping of sections")])
    out = _Collector(file, located)
    data: dict[str, Any] = located.data
    sections: dict[str, Any] = {}
    for key, value in data.items():
        model = _SECTIONS.get(str(key))
        if key in ("connections", "machines"):
            continue
        if model is None:
            out.add((key,), unknown_key_message(str(key), [*_SECTIONS, "connections", "machines"]))
        else:
            sections[str(key)] = out.validate(model, value if value is not None else {}, (key,))
    raw_conns = data.get("connections") or {}
    raw_machines = data.get("machines") or {}
    builder = _Builder(out)
    connections: dict[str, tuple[str, BaseModel]] = {}
    if isinstance(raw_conns, dict):
        connections = builder.connections(raw_conns)
    else:
        out.add(("connections",), "must be a mapping of connection names")
    machines: dict[str, MachineSpec | None] = {}
    if isinstance(raw_machines, dict) and raw_machines:
        for code, body in raw_machines.items():
            m = out.validate(_Machine, body, ("machines", code))
            if m is not None:
                machines[str(code)] = builder.machine(str(code), m, connections, raw_conns)
    else:
        out.add(("machines",), "must map at least one machine code to its tags")
    if out.problems:
        raise ConfigError(out.problems)
    specs = {
        name: ConnectionSpec(name, proto, model, builder.tags.get(name, {}))
        for name, (proto, model) in connections.items()
    }
    return AgentConfig(
        path=file,
        prodsmart=sections.get("prodsmart") or ProdsmartSection(),
        storage=sections.get("storage") or StorageSection(),
        metrics=sections.get("metrics") or MetricsSection(),
        health=sections.get("health") or HealthSection(),
        logging=sections.get("logging") or LoggingSection(),
        connections=specs,
        machines={code: m for code, m in machines.items() if m is not None},
    )


_SECTIONS: dict[str, type[BaseModel]] = {
    "prodsmart": ProdsmartSection,
    "storage": StorageSection,
    "metrics": MetricsSection,
    "health": HealthSection,
    "logging": LoggingSection,
}


class _Builder:
    """Second pass: protocol-specific connections and tags, cross references."""

    def __init__(self, out: _Collector) -> None:
        self.out = out
        self.tags: dict[str, dict[str, TagBinding]] = {}
        self.protocols: dict[str, str] = {}  # also for connections whose settings are broken

    def connections(self, raw: Mapping[str, Any]) -> dict[str, tuple[str, BaseModel]]:
        result: dict[str, tuple[str, BaseModel]] = {}
        for name, body in raw.items():
            path: KeyPath = ("connections", name)
            if not isinstance(body, dict) or len(body) != 1:
                self.out.add(path, f"must hold exactly one protocol: {', '.join(PROTOCOLS)}")
                continue
            (proto, settings), = body.items()
            if proto not in PROTOCOLS:
                self.out.add((*path, proto), unknown_key_message(str(proto), list(PROTOCOLS)))
                continue
            self.protocols[name] = proto
            model = self.out.validate(PROTOCOLS[proto].connection_model, settings or {}, (*path, proto))
            if model is not None:
                result[name] = (proto, model)
        return result

    def machine(
        self, code: str, m: _Machine, conns: Mapping[str, tuple[str, BaseModel]], declared: Any
    ) -> MachineSpec | None:
        path: KeyPath = ("machines", code)
        if m.connection not in self.protocols:
            names = list(declared) if isinstance(declared, dict) else []
            known = difflib.get_close_matches(m.connection, names, n=1)
            hint = f" (did you mean {known[0]!r}?)" if known else ""
            self.out.add((*path, "connection"), f"no connection named {m.connection!r}{hint}")
            return None
        proto = self.protocols[m.connection]
        before = len(self.out.problems)
        bind = _TagBinder(self, m.connection, proto, path)
        counter = bind.counter(m.counter, ("counter",)) if m.counter is not None else None
        waste = {w: bind.counter(t, ("waste", w)) for w, t in m.waste.items()}
        running = bind.running(m.running) if m.running is not None else None
        reason = m.stop_reason or _StopReason()
        reason_tag = bind.plain(reason.tag, ("stop_reason", "tag"), "stop_reason") if reason.tag else None
        params = {p: bind.parameter(t, ("parameters", p)) for p, t in m.parameters.items()}
        if m.counter is None and not m.waste and m.running is None and not m.parameters:
            self.out.add(path, "maps no tag: give at least a counter, running or parameters")
        if m.idle_after is not None and m.counter is None:
            self.out.add((*path, "idle_after"), "needs a counter: idle means no count for a while")
        if len(self.out.problems) > before or m.connection not in conns:
            return None
        return MachineSpec(
            code=code,
            connection=m.connection,
            counter=counter,
            waste={k: v for k, v in waste.items() if v is not None},  # all set: no problem
            running=running,
            stop_reason=StopReasonSpec(reason_tag, {_text(k): v for k, v in reason.types.items()},
                                       reason.default),
            min_duration=m.min_duration,
            idle_after=m.idle_after,
            idle_type=m.idle_type,
            parameters={k: v for k, v in params.items() if v is not None},
        )


class _TagBinder:
    """Splits a tag mapping into role options and protocol address, and registers the tag."""

    def __init__(self, builder: _Builder, connection: str, proto: str, base: KeyPath) -> None:
        self.builder = builder
        self.connection = connection
        self.proto = proto
        self.base = base

    def _split(
        self, raw: Any, path: KeyPath, role_model: type[BaseModel] | None, role_keys: set[str]
    ) -> tuple[BaseModel | None, BaseModel | None]:
        out = self.builder.out
        full = (*self.base, *path)
        if not isinstance(raw, dict):
            out.add(full, "must be a mapping, e.g. {holding: 100, type: uint32}")
            return None, None
        role_part = {k: v for k, v in raw.items() if k in role_keys}
        addr_part = {k: v for k, v in raw.items() if k not in role_keys}
        topic = addr_part.get("topic")
        if isinstance(topic, str) and "{machine}" in topic:  # one MQTT topic template for every machine
            addr_part["topic"] = topic.replace("{machine}", str(self.base[1]))
        spec_model = PROTOCOLS[self.proto].tag_model
        spec = self._validate_spec(spec_model, addr_part, full, role_keys)
        role = out.validate(role_model, role_part, full) if role_model is not None else None
        return spec, role

    def _validate_spec(
        self, model: type[BaseModel], data: dict[str, Any], full: KeyPath, role_keys: set[str]
    ) -> BaseModel | None:
        out = self.builder.out
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
                if err["type"] == "extra_forbidden" and loc:
                    known = [f.alias or n for n, f in model.model_fields.items()] + sorted(role_keys)
                    out.add((*full, *loc), unknown_key_message(str(loc[-1]), known)
                            + f" for a {self.proto} tag")
                else:
                    out.add((*full, *loc), _explain(err, model, loc))
            return None

    def _register(self, spec: BaseModel, role: str) -> str:
        key = json.dumps(spec.model_dump(mode="json", exclude_none=True), sort_keys=True)
        tags = self.builder.tags.setdefault(self.connection, {})
        old = tags.get(key)
        roles = (role,) if old is None else old.roles + ((role,) if role not in old.roles else ())
        tags[key] = TagBinding(key, spec, roles)
        return key

    def counter(self, raw: Any, path: KeyPath) -> CounterSpec | None:
        spec, role = self._split(raw, path, _CounterRole, COUNTER_ROLE_KEYS)
        if spec is None or not isinstance(role, _CounterRole):
            return None
        modulus = role.modulus or counter_modulus(getattr(spec, "type", None))
        key = self._register(spec, "counter" if path[0] == "counter" else "waste")
        if role.mode == "delta":
            self._register(spec, "delta")  # sources treat increments specially (MQTT: retained replays)
        return CounterSpec(key, role.mode, modulus, role.max_rate, role.confirm_reset)

    def running(self, raw: Any) -> RunningSpec | None:
        spec, role = self._split(raw, ("running",), _RunningRole, RUNNING_ROLE_KEYS)
        if spec is None or not isinstance(role, _RunningRole):
            return None
        values = tuple(role.running_values) if role.running_values is not None else None
        return RunningSpec(self._register(spec, "running"), values, role.invert)

    def parameter(self, raw: Any, path: KeyPath) -> ParameterSpec | None:
        spec, role = self._split(raw, path, _ParameterRole, PARAMETER_ROLE_KEYS)
        if spec is None or not isinstance(role, _ParameterRole):
            return None
        key = self._register(spec, "parameter")
        return ParameterSpec(key, role.deadband, role.min_interval, role.max_interval,
                             role.scale, role.offset)

    def plain(self, raw: Any, path: KeyPath, role: str) -> str | None:
        spec, _ = self._split(raw, path, None, set())
        return self._register(spec, role) if spec is not None else None
