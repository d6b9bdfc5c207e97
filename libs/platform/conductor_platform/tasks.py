"""Ending a background task: cancelled until it has ended.

On Python 3.11 ``asyncio.wait_for`` drops a cancel that lands as the future it waits for completes
(CPython gh-86296, fixed in 3.12). nats-py's requests and its connect are such waits: a loop that lost
its one cancel went on for ever, and whoever awaited its end waited with it (a test's heartbeat loop
hung a CI worker for 300 s; a scheduler whose connection closed for good would have hung the same way
on its heartbeat watcher instead of exiting to be started again).
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_until_done(task: asyncio.Future[Any], every_s: float = 0.5) -> None:
    """Cancel ``task`` and wait until it is done, cancelling it again every ``every_s`` while it runs
    on. Raises what it failed with, if it failed rather than ended cancelled or with a result."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every_s)
    if not task.cancelled() and (failure := task.exception()) is not None:
        raise failure
