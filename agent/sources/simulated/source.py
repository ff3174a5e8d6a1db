"""A simulated PLC: counter, scrap, run state, stop reason and temperature as functions of time.

Every value is a deterministic function of wall-clock time, the seed and the unit, so the
simulated machine goes on producing while the agent is stopped, exactly like a real one,
and a test can compute the true count at any moment (`SimulatedPlc.produced`).
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections.abc import Sequence

from agent.core.model import Reading, Scalar
from agent.sources.base import SourceContext, TagBinding
from agent.sources.simulated.config import SimulatedConnection, SimulatedTag


class SimulatedPlc:
    """One simulated machine (`unit`) of a simulated connection."""

    def __init__(self, conf: SimulatedConnection, unit: str) -> None:
        self.conf = conf
        self.salt = zlib.crc32(f"{conf.seed}:{unit}".encode())
        self.phase = (self.salt % 1000) / 1000 * conf.cycle
        self.run_length = max(conf.cycle - conf.stopped, 0.0)

    def _run_time_until(self, x: float) -> float:
        """Seconds of running in [0, x] of the shifted timeline."""
        cycles, pos = divmod(x, self.conf.cycle)
        return cycles * self.run_length + min(pos, self.run_length)

    def _clamp(self, t: float) -> float:
        if self.conf.start_at is not None:
            t = max(t, self.conf.start_at)
        if self.conf.stop_at is not None:
            t = min(t, self.conf.stop_at)
        return t

    def produced(self, t: float) -> int:
        """Parts produced since `start_at` (or since the epoch) until time `t`: the true count."""
        start = self.conf.start_at if self.conf.start_at is not None else 0.0
        t = self._clamp(t)
        if t <= start:
            return 0
        seconds = self._run_time_until(t + self.phase) - self._run_time_until(start + self.phase)
        return math.floor(self.conf.rate * seconds + 1e-9)

    def scrap(self, t: float) -> int:
        return self.produced(t) // self.conf.scrap_every

    def _reset_time(self, boundary: float) -> float:
        """A reset is due at each `reset_every` boundary and happens at the first moment from
        then on when the machine has been stopped for half its stop (a shift or job change):
        the last count before it stays readable for a while, as on a real line."""
        target = self.run_length + (self.conf.cycle - self.run_length) / 2
        pos = (boundary + self.phase) % self.conf.cycle
        return boundary if pos >= target else boundary + target - pos

    def last_reset(self, t: float) -> float | None:
        """When the raw counter was last set to 0 (None: it never resets)."""
        every = self.conf.reset_every
        if every is None:
            return None
        boundary = math.floor(t / every) * every
        reset = self._reset_time(boundary)
        return reset if reset <= t else self._reset_time(boundary - every)

    def raw(self, signal: str, t: float, modulus: int | None) -> int:
        """What the PLC register holds: since the last reset, wrapped at the modulus."""
        total = self.produced if signal == "count" else self.scrap
        value = total(t)
        reset = self.last_reset(t)
        if reset is not None:
            value -= total(reset)
        modulus = self.conf.modulus or modulus
        return value % modulus if modulus else value

    def running(self, t: float) -> bool:
        if self.conf.stop_at is not None and t >= self.conf.stop_at:
            return self.running(self.conf.stop_at - 1e-6)
        return (t + self.phase) % self.conf.cycle < self.run_length

    def reason(self, t: float) -> int:
        cycle_index = math.floor((t + self.phase) / self.conf.cycle)
        return 1 + (cycle_index + self.salt) % self.conf.reasons

    def temperature(self, t: float) -> float:
        return round(180.0 + 5.0 * math.sin(2 * math.pi * t / 300.0 + self.phase), 2)

    def value(self, tag: SimulatedTag, t: float) -> Scalar:
        width = {"uint16": 2**16, "int16": 2**16, "uint32": 2**32, "int32": 2**32}.get(tag.type or "")
        if tag.signal in ("count", "scrap"):
            return self.raw(tag.signal, t, width)
        if tag.signal == "running":
            return self.running(t)
        if tag.signal == "reason":
            return self.reason(t) if not self.running(t) else 0
        return self.temperature(t)


class SimulatedSource:
    """Polls the simulated PLCs of one connection; it never fails, so it never reconnects."""

    def __init__(
        self, name: str, config: SimulatedConnection, tags: Sequence[TagBinding], ctx: SourceContext
    ) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self.tags = [(b.key, b.spec) for b in tags if isinstance(b.spec, SimulatedTag)]
        self.plcs = {spec.unit: SimulatedPlc(config, spec.unit) for _, spec in self.tags}

    def read_all(self, t: float) -> list[Reading]:
        return [
            Reading(self.name, key, self.plcs[spec.unit].value(spec, t), source_time=t, received_time=t)
            for key, spec in self.tags
        ]

    async def run(self) -> None:
        self.ctx.connection_up(self.name)
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self.ctx.emit(self.read_all(time.time()))
            next_at += self.config.poll
            delay = next_at - loop.time()
            if delay < 0:  # overrun: skip the missed slots instead of bursting to catch up
                next_at = loop.time()
                delay = 0
            await asyncio.sleep(delay)
