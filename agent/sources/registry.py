"""The protocols a connection can use: their config models and (lazily imported) sources."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from pydantic import BaseModel

from agent.sources.base import SourceFactory
from agent.sources.modbus.config import ModbusConnection, ModbusTag
from agent.sources.mqtt.config import MqttConnection, MqttTag
from agent.sources.opcua.config import OpcUaConnection, OpcUaTag
from agent.sources.simulated.config import SimulatedConnection, SimulatedTag


@dataclass(frozen=True, slots=True)
class ProtocolSpec:
    connection_model: type[BaseModel]
    tag_model: type[BaseModel]
    source_path: str  # "module:Class", imported only when a connection of it runs

    def load_source(self) -> SourceFactory:
        module_name, _, attr = self.source_path.partition(":")
        factory: SourceFactory = getattr(importlib.import_module(module_name), attr)
        return factory


PROTOCOLS: dict[str, ProtocolSpec] = {
    "modbus": ProtocolSpec(ModbusConnection, ModbusTag, "agent.sources.modbus.source:ModbusSource"),
    "opcua": ProtocolSpec(OpcUaConnection, OpcUaTag, "agent.sources.opcua.source:OpcUaSource"),
    "mqtt": ProtocolSpec(MqttConnection, MqttTag, "agent.sources.mqtt.source:MqttSource"),
    "simulated": ProtocolSpec(
        SimulatedConnection, SimulatedTag, "agent.sources.simulated.source:SimulatedSource"
    ),
}
