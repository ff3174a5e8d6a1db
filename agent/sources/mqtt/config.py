"""MQTT connection and tag configuration (validated before anything connects)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from agent.core.schema import Duration, Strict
from agent.sources.mqtt.payload import ValueType, parse_path
from agent.sources.mqtt.topics import filter_problem


def _protocol(value: Any) -> Any:
    """YAML reads `protocol: 5` as a number and `protocol: 3.1.1` as text: accept both."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        if value != int(value):
            return str(value)
        return {5: "5", 3: "3.1.1", 311: "3.1.1"}.get(int(value), str(value))
    if isinstance(value, str) and value.strip() in ("5.0", "v5", "mqttv5"):
        return "5"
    return value


Protocol = Annotated[Literal["3.1.1", "5"], BeforeValidator(_protocol)]


class MqttTls(Strict):
    """TLS to the broker. `tls: true` verifies the broker with the system's CA certificates."""

    ca_file: str | None = None  # PEM file of the CA that signed the broker's certificate
    cert_file: str | None = None  # client certificate (PEM), when the broker asks for one
    key_file: str | None = None  # its private key (PEM); a password comes from the secrets
    verify_hostname: bool = True  # off only for a broker whose certificate names another host

    @model_validator(mode="after")
    def _pair(self) -> MqttTls:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file: the client certificate it belongs to")
        return self


class MqttConnection(Strict):
    """One MQTT broker. Username and password come from the secrets, never from this file."""

    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535)  # default 1883, or 8883 with TLS
    client_id: str | None = None  # default prodsmart-edge-<host name>-<connection name>
    protocol: Protocol = "3.1.1"
    tls: MqttTls | None = None
    keepalive: Duration = 30.0
    session_expiry: Duration = 7 * 86400.0  # MQTT 5: how long the broker keeps our session
    connect_timeout: Duration = 10.0
    reconnect_min: Duration = 1.0
    reconnect_max: Duration = 60.0

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_flag(cls, value: Any) -> Any:
        if value is True:
            return {}
        return None if value is False else value

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        if value is not None and (not value or "\x00" in value or len(value.encode()) > 65535):
            raise ValueError("must be a non-empty text without NUL, unique on the broker")
        return value

    @field_validator("keepalive")
    @classmethod
    def _keepalive(cls, value: float) -> float:
        if not 5 <= value <= 65535:
            raise ValueError("must be between 5s and 65535s")
        return value

    @field_validator("session_expiry")
    @classmethod
    def _session_expiry(cls, value: float) -> float:
        if not 60 <= value <= 0xFFFFFFFF:
            raise ValueError("must be at least 1m: the broker keeps readings for us while the agent restarts")
        return value

    @model_validator(mode="after")
    def _backoff(self) -> MqttConnection:
        if self.reconnect_min <= 0 or self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min must be above 0 and not above reconnect_max")
        return self


class MqttTag(Strict):
    """One topic (filter), and where the value is in its payloads."""

    topic: str
    json_path: str | None = Field(None, alias="json")  # `json` would shadow BaseModel.json
    id: str | None = None  # JSON path of a message id: de-duplicates delta counters
    timestamp: str | None = None  # JSON path of the time the value was taken
    type: ValueType | None = None

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        problem = filter_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("json_path", "id", "timestamp")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None:
            parse_path(value)
        return value

    @model_validator(mode="after")
    def _needs_json(self) -> MqttTag:
        for name in ("id", "timestamp"):
            if getattr(self, name) is not None and self.json_path is None:
                raise ValueError(f"{name} is a path in a JSON payload: give json (the path to the value) too")
        return self
