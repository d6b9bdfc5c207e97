from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus

T = TypeVar("T")


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 20, what: str = "condition") -> T:
    """Poll until ``probe`` returns something truthy (waiting on real servers, not asserting speed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.05)


def starts(events: Iterable[ev.Event]) -> list[ev.JobStarted]:
    """Every run's start the log records: its JobStarted, or, for a run that ended within the
    executor's start report delay, the pid and start its outcome carries (given as a JobStarted)."""
    found: list[ev.JobStarted] = []
    for e in events:
        if isinstance(e, ev.JobStarted):
            found.append(e)
        elif isinstance(e, ev.TERMINAL_JOB_EVENTS) and e.started_at is not None and e.pid is not None and e.node:
            found.append(ev.JobStarted(job_id=e.job_id, node=e.node, pid=e.pid, run=e.run, occurred_at=e.started_at))
    return found


async def read_log(bus: Bus) -> list[tuple[int, str, ev.Event]]:
    """The whole stream, in order."""
    info = await bus.js.stream_info(subjects.STREAM)
    out: list[tuple[int, str, ev.Event]] = []
    if info.state.last_seq == 0:
        return out
    for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
        msg = await bus.js.get_msg(subjects.STREAM, seq=seq)
        out.append((seq, msg.subject or "", ev.decode(msg.data or b"")))
    return out


def fast_executor(nats_url: str, node: str, state_dir: Path) -> ExecutorSettings:
    """An executor whose retries are paced in tens of milliseconds: an outage in a test outlasts many
    more tries (the executor once gave an outcome 30 before dropping it) in seconds, not minutes."""
    return ExecutorSettings(
        nats_url=nats_url,
        node=node,
        cpus=2,
        memory="1G",
        state_dir=state_dir,
        kill_grace_s=1,
        retry_first_s=0.02,
        retry_max_s=0.1,
        stop_jobs_on_exit=True,  # what a test starts it ends
    )
