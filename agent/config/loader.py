"""The agent's configuration: YAML tag map in, validated frozen specs out, every error with file:line.

`load_config(path)` raises `ConfigError` carrying *all* problems found, each with the file,
the line and the key path, so a technician fixes a tag map in one pass. The specs it builds
are defined in `agent.config.specs`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.config.problems import Collector, ConfigError, KeyPath, Problem, explain, unknown_key_message
from agent.config.sections import (
    COUNTER_ROLE_KEYS,
    PARAMETER_ROLE_KEYS,
    RUNNING_ROLE_KEYS,
    CounterRole,
    HealthSection,
    LoggingSection,
    MachineModel,
    MetricsSection,
    ParameterRole,
    ProdsmartSection,
    RunningRole,
    StopReasonModel,
    StorageSection,
)
from agent.config.specs import (
    AgentConfig,
    ConnectionSpec,
    CounterSpec,
    MachineSpec,
    ParameterSpec,
    RunningSpec,
    StopReasonSpec,
    _text,
)
from agent.config.yamlpos import YamlError, load_yaml
from agent.core.schema import counter_modulus
from agent.sources.base import TagBinding
from agent.sources.registry import PROTOCOLS

# --------------------------------------------------------------------------- loading


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a config file; raise `ConfigError` with every problem found."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(file, None, "", f"cannot read the file: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(file, 1, "", "the file is not UTF-8 text (a binary file?)")]) from None
    return parse_config(text, file)


def parse_config(text: str, file: str = "<config>") -> AgentConfig:
    try:
        located = load_yaml(text)
    except YamlError as exc:
        raise ConfigError([Problem(file, exc.line, "", exc.message)]) from None
    if located.data in (None, {}) and not _has_content(text):
        raise ConfigError([Problem(file, 1, "", "the file is empty or holds only comments: it needs at "
                                   "least connections and machines")])
    if not isinstance(located.data, dict):
        raise ConfigError([Problem(file, 1, "", "the file must be a mapping of sections")])
    out = Collector(file, located)
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
            m = out.validate(MachineModel, body, ("machines", code))
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
        warnings=tuple(out.warnings),
    )


def _has_content(text: str) -> bool:
    """Whether the text holds anything but blank lines and comments."""
    return any(line.strip() and not line.strip().startswith("#") for line in text.splitlines())


_SECTIONS: dict[str, type[BaseModel]] = {
    "prodsmart": ProdsmartSection,
    "storage": StorageSection,
    "metrics": MetricsSection,
    "health": HealthSection,
    "logging": LoggingSection,
}


class _Builder:
    """Second pass: protocol-specific connections and tags, cross references."""

    def __init__(self, out: Collector) -> None:
        self.out = out
        self.tags: dict[str, dict[str, TagBinding]] = {}
        self.protocols: dict[str, str] = {}  # also for connections whose settings are broken
        self.models: dict[str, BaseModel] = {}

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
                self.models[name] = model
        return result

    def machine(
        self, code: str, m: MachineModel, conns: Mapping[str, tuple[str, BaseModel]], declared: Any
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
        reason = m.stop_reason or StopReasonModel()
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


# Connection settings that say *where* a value is read (not how often or how patiently).
_WHERE_FIELDS = ("host", "port", "serial", "unit", "url")


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
                    out.add((*full, *loc), explain(err, model, loc))
            return None

    def _register(self, spec: BaseModel, role: str) -> str:
        key = json.dumps(spec.model_dump(mode="json", exclude_none=True), sort_keys=True)
        tags = self.builder.tags.setdefault(self.connection, {})
        old = tags.get(key)
        roles = (role,) if old is None else old.roles + ((role,) if role not in old.roles else ())
        tags[key] = TagBinding(key, spec, roles)
        return key

    def counter(self, raw: Any, path: KeyPath) -> CounterSpec | None:
        spec, role = self._split(raw, path, CounterRole, COUNTER_ROLE_KEYS)
        if spec is None or not isinstance(role, CounterRole):
            return None
        type_name = getattr(spec, "type", None)
        modulus = role.modulus or counter_modulus(type_name)
        signed = isinstance(type_name, str) and type_name.startswith("int") and role.modulus is None
        key = self._register(spec, "counter" if path[0] == "counter" else "waste")
        if role.mode == "delta":
            self._register(spec, "delta")  # sources treat increments specially (MQTT: retained replays)
            if "id" in type(spec).model_fields and getattr(spec, "id", None) is None:
                self.builder.out.warn((*self.base, *path), "a delta counter without id: a message the "
                                      "broker delivers twice (QoS 1, after a reconnect) is counted twice; "
                                      "give id: the JSON path of a message id, if the publisher sends one")
        return CounterSpec(key, role.mode, modulus, role.max_rate, role.confirm_reset, signed,
                           self._where())

    def _where(self) -> str:
        """The connection and the fields of its settings that say where values are read."""
        settings: dict[str, Any] = {}
        model = self.builder.models.get(self.connection)
        if model is not None:
            dumped = model.model_dump(mode="json")
            settings = {k: dumped[k] for k in _WHERE_FIELDS if dumped.get(k) is not None}
        where = json.dumps([self.connection, self.proto, settings], sort_keys=True)
        # Saved with every counter state on every commit: a digest keeps that small.
        return hashlib.blake2b(where.encode(), digest_size=8).hexdigest()

    def running(self, raw: Any) -> RunningSpec | None:
        spec, role = self._split(raw, ("running",), RunningRole, RUNNING_ROLE_KEYS)
        if spec is None or not isinstance(role, RunningRole):
            return None
        values = tuple(role.running_values) if role.running_values is not None else None
        return RunningSpec(self._register(spec, "running"), values, role.invert)

    def parameter(self, raw: Any, path: KeyPath) -> ParameterSpec | None:
        spec, role = self._split(raw, path, ParameterRole, PARAMETER_ROLE_KEYS)
        if spec is None or not isinstance(role, ParameterRole):
            return None
        key = self._register(spec, "parameter")
        return ParameterSpec(key, role.deadband, role.min_interval, role.max_interval,
                             role.scale, role.offset)

    def plain(self, raw: Any, path: KeyPath, role: str) -> str | None:
        spec, _ = self._split(raw, path, None, set())
        return self._register(spec, role) if spec is not None else None
