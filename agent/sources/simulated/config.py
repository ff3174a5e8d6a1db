"""Configuration of the simulated PLC (demo, tests, commissioning without hardware)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.core.schema import Duration, Strict


class SimulatedConnection(Strict):
    """A PLC whose values are a deterministic function of wall-clock time and a seed.

    It behaves like an external machine: stop the agent, start it again, and the counter has
    moved on meanwhile exactly as a real one would.
    """

    seed: int = 1
    poll: Duration = 0.5
    rate: float = Field(10.0, gt=0, description="parts per second while running")
    cycle: Duration = Field(60.0, gt=0, description="one run + stop period")
    stopped: Duration = Field(10.0, ge=0, description="stopped part of each cycle")
    reset_every: Duration | None = Field(None, gt=0, description="raw counter back to 0")
    modulus: int | None = Field(None, ge=2, description="raw counter wraps at this value")
    scrap_every: int = Field(50, ge=1, description="one scrap part per N good parts")
    reasons: int = Field(2, ge=1, description="stop reason codes 1..N, in turn")
    # Production only between these epoch times (tests compute the exact true count).
    start_at: float | None = None
    stop_at: float | None = None


class SimulatedTag(Strict):
    """One signal of one simulated machine (`unit` makes machines differ)."""

    signal: Literal["count", "scrap", "running", "reason", "temperature"]
    unit: str = "1"
    type: str | None = None
