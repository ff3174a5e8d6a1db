"""Modbus connection and tag configuration (validated before anything connects)."""

from __future__ import annotations

from agent.confbase import Duration, Strict


class ModbusConnection(Strict):
    """One Modbus TCP device or gateway (placeholder: the Modbus issue completes it)."""

    host: str
    port: int = 502
    unit: int = 1
    poll: Duration = 1.0
    timeout: Duration = 3.0


class ModbusTag(Strict):
    """One value in one of the four Modbus tables (placeholder: the Modbus issue completes it)."""

    holding: int | None = None
    input: int | None = None
    coil: int | None = None
    discrete: int | None = None
    type: str | None = None
    word_order: str | None = None
