"""Stopping tasks that swallow a cancellation (Python 3.11 `wait_for` racing its inner future)."""

from __future__ import annotations

import asyncio

from agent.runtime.service import stop_tasks


async def _stubborn(swallow: int) -> None:
    """Goes on after its first `swallow` cancellations, like a source whose library's wait_for
    returned a result that completed just as the cancellation arrived."""
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if swallow == 0:
                raise
            swallow -= 1


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again_until_it_stops() -> None:
    task = asyncio.create_task(_stubborn(2))
    await asyncio.sleep(0.01)
    assert await asyncio.wait_for(stop_tasks([task], 5.0), 10)
    assert task.cancelled()


async def test_stopping_gives_up_after_its_time_and_says_so() -> None:
    task = asyncio.create_task(_stubborn(4))
    await asyncio.sleep(0.01)
    assert not await stop_tasks([task], 0.4)
    assert not task.done()
    assert await asyncio.wait_for(stop_tasks([task], None), 10)
    assert task.cancelled()
