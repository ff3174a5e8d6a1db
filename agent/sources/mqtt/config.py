"""MQTT connection and tag configuration (validated before anything connects)."""

from __future__ import annotations

from pydantic import Field

from agent.confbase import Strict


class MqttConnection(Strict):
    """One MQTT broker (placeholder: the MQTT issue completes it)."""

    host: str
    port: int = 1883


class MqttTag(Strict):
    """One topic, and where the value is in its payload (placeholder: the MQTT issue completes it)."""

    topic: str
    json_path: str | None = Field(None, alias="json")  # `json` would shadow BaseModel.json
    id: str | None = None
    type: str | None = None
