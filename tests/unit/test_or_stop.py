"""``retry.or_stop``: a step raced with the stop event, and whose cancel is whose."""

from __future__ import annotations

import asyncio

import pytest

from conductor_platform.retry import Stopped, or_stop


async def _forever() -> None:
    await asyncio.Event().wait()


async def test_the_steps_result_when_it_ends_first() -> None:
    async def step() -> int:
        return 7

    assert await or_stop(step(), asyncio.Event()) == 7


async def test_the_steps_failure_is_raised() -> None:
    async def step() -> None:
        raise ConnectionError("away")

    with pytest.raises(ConnectionError, match="away"):
        await or_stop(step(), asyncio.Event())


async def test_a_stop_cancels_the_step_and_raises_stopped() -> None:
    stop = asyncio.Event()
    step = asyncio.ensure_future(_forever())
    asyncio.get_running_loop().call_later(0.05, stop.set)
    with pytest.raises(Stopped):
        await or_stop(step, stop)
    assert step.cancelled()


async def test_a_step_cancelled_by_someone_else_is_not_a_stop() -> None:
    async def step() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await or_stop(step(), asyncio.Event())


async def test_the_callers_cancel_is_kept_while_the_step_is_slow_to_end() -> None:
    stop = asyncio.Event()

    async def slow_to_cancel() -> None:
        try:
            await _forever()
        finally:
            await asyncio.shield(asyncio.sleep(0.2))

    caller = asyncio.ensure_future(or_stop(slow_to_cancel(), stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.sleep(0.05)  # or_stop now waits for the step to end
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled()
