"""The YAML sections as pydantic models: what a technician may write, with defaults."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from agent.config.problems import NOT_SHOWN
from agent.core.model import Scalar
from agent.core.schema import Duration, Strict


class Paths(Strict):
    """Endpoint paths; `{machine}` is replaced by the URL-encoded machine code."""

    counter: str = "/api/machines/{machine}/counter"
    parameters: str = "/api/machines/{machine}/parameters"
    startstop: str = "/api/machines/{machine}/startstop"
    authorization: str = "/api/authorization"


class BudgetSection(Strict):
    """The company's requests a minute shared by several agents through Redis (or Valkey).

    `requests_per_minute` (of the prodsmart section) is then what all agents of the company use
    together; credentials come from PRODSMART_REDIS_USERNAME / PRODSMART_REDIS_PASSWORD.
    """

    redis: str
    company: str = "default"
    weight: float = Field(default=1.0, gt=0)
    fallback_per_minute: float | None = Field(default=None, gt=0, le=120)
    tls_ca_file: str | None = None
    timeout: Duration = 0.5
    key_prefix: str = "prodsmart-edge"

    @field_validator("redis")
    @classmethod
    def _redis(cls, value: str) -> str:
        match = re.match(r"^(rediss?|unix)://(?:([^@/]*)@)?([^/\s]*)", value)
        if not match:
            raise ValueError("must be a redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or unix:///PATH "
                             "URL")
        if match.group(2) is not None:
            raise ValueError(f"must not carry credentials {NOT_SHOWN}: set PRODSMART_REDIS_USERNAME and "
                             "PRODSMART_REDIS_PASSWORD (environment, env file or systemd credentials)")
        if match.group(1) != "unix" and not match.group(3):
            raise ValueError("must name a host, e.g. redis://10.0.0.5:6379/0")
        return value


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
    budget: BudgetSection | None = None

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

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.strip():
            # SQLite would open a temporary database: every count and queued call gone at the restart.
            raise ValueError("must name the database file, e.g. /var/lib/prodsmart-edge/agent.db")
        return value


class MetricsSection(Strict):
    enabled: bool = True
    listen: str = "127.0.0.1:9108"
    console: bool = True  # the browser console at / (needs PRODSMART_EDGE_CONSOLE_TOKEN off loopback)

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


class CounterRole(Strict):
    mode: Literal["total", "delta"] = "total"
    max_rate: float | None = Field(None, gt=0)
    modulus: int | None = Field(None, ge=2)
    confirm_reset: bool = True


class RunningRole(Strict):
    running_values: list[Scalar] | None = None
    invert: bool = False


class ParameterRole(Strict):
    deadband: float = Field(0.0, ge=0)
    min_interval: Duration = 0.0
    max_interval: Duration | None = None
    scale: float = 1.0
    offset: float = 0.0


class StopReasonModel(Strict):
    tag: dict[str, Any] | None = None
    types: dict[Scalar, str] = Field(default_factory=dict)
    default: str = "Stopped"


class MachineModel(Strict):
    connection: str
    counter: dict[str, Any] | None = None
    waste: dict[str, dict[str, Any]] = Field(default_factory=dict)
    running: dict[str, Any] | None = None
    stop_reason: StopReasonModel | None = None
    min_duration: Duration = 0.0
    idle_after: Duration | None = None
    idle_type: str = "No production"
    parameters: dict[str, dict[str, Any]] = Field(default_factory=dict)
