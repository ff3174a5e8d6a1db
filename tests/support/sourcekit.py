"""What protocol source tests share: a recording SourceContext, waiting, running a source, servers."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.core.model import Quality, Reading
from agent.sources.base import SourceContext, TagBinding


@dataclass
class Recorder:
    """A SourceContext whose emit collects readings and whose state reports are kept in order."""

    readings: list[Reading] = field(default_factory=list)
    batches: list[tuple[float, list[Reading]]] = field(default_factory=list)
    states: list[tuple[str, str]] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)

    def ctx(self, metrics: Any = None) -> SourceContext:
        async def emit(readings: Sequence[Reading], *, durable: bool = False) -> None:
            self.readings.extend(readings)
            self.batches.append((time.monotonic(), list(readings)))

        return SourceContext(
            emit=emit,
            connection_up=lambda name: self.states.append(("up", name)),
            connection_down=lambda name, why: self.states.append(("down", why)),
            secret=lambda conn, key: self.secrets.get(key),
            metrics=metrics,
        )

    def good(self, key: str) -> list[Any]:
        return [r.value for r in self.readings if r.tag == key and r.quality is Quality.GOOD]

    def bad(self, key: str) -> list[Reading]:
        return [r for r in self.readings if r.tag == key and r.quality is Quality.BAD]

    def last(self, key: str) -> Reading | None:
        return next((r for r in reversed(self.readings) if r.tag == key), None)

    def downs(self) -> list[str]:
        return [why for state, why in self.states if state == "down"]

    def assert_one_reading_per_tag(self, tags: Sequence[TagBinding]) -> None:
        """Every batch (poll cycle) carries exactly one reading of every tag."""
        for _, batch in self.batches:
            assert sorted(r.tag for r in batch) == sorted(t.key for t in tags)


async def wait_for(predicate: Callable[[], object], within: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate` on the event loop until true; fail the test with `what` after `within` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(source: Any, *, no_leftovers: bool = False) -> AsyncIterator[asyncio.Task[None]]:
    """Run `source.run()` in a task for the block, and cancel it (awaited) afterwards; with
    `no_leftovers` the source must leave no task of its own (or of its library's) behind."""
    task = asyncio.create_task(source.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if no_leftovers:
        await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        assert not left, f"tasks left behind: {left}"


def kill_process(proc: subprocess.Popen[str] | None) -> None:
    """SIGKILL a server process (a PLC losing power), reap it and close its pipes."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
