"""``cancel_until_done``: a task that lost its cancel inside ``asyncio.wait_for`` (CPython gh-86296,
Python 3.11) is ended all the same, where one cancel and an ``await`` waited for ever."""

from __future__ import annotations

import asyncio
import sys

import pytest

from conductor_platform.tasks import cancel_until_done


async def test_a_loop_whose_wait_for_dropped_the_cancel_is_ended_all_the_same() -> None:
    loop = asyncio.get_running_loop()
    answers: list[asyncio.Future[None]] = []

    async def beat() -> None:
        while True:  # as a heartbeat loop: a request, its answer awaited as nats-py awaits it
            answers.append(answer := loop.create_future())
            await asyncio.wait_for(answer, 30)

    task = asyncio.create_task(beat())
    await asyncio.sleep(0)
    answers[-1].set_result(None)
    task.cancel()  # in the same step as the answer: wait_for returns the answer and drops the cancel
    await asyncio.sleep(0.05)
    if sys.version_info < (3, 12):
        assert not task.done() and len(answers) == 2  # went round again: an `await task` would hang
    await asyncio.wait_for(cancel_until_done(task, every_s=0.05), 10)
    assert task.cancelled()


async def test_a_task_that_failed_raises_its_failure_and_one_cancelled_or_done_nothing() -> None:
    async def fails() -> None:
        raise ValueError("its own failure")

    async def returns() -> int:
        return 1

    failed, returned = asyncio.create_task(fails()), asyncio.create_task(returns())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="its own failure"):  # as an ``await`` of it would
        await cancel_until_done(failed)
    await cancel_until_done(returned)
    assert returned.result() == 1
