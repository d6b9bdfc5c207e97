"""Chaos: the executor's heartbeat across a nats-server restart, and self-fencing when NATS stays away
longer than node_lost_after_s: the job that would be requeued elsewhere is killed, the other runs on."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor import supervision as sv
from conductor_executor.outcomes import FENCED
from conductor_platform.bus import Bus
from tests.chaos.test_executor_nats_outage import NODE, Nats, _events, _started, _the_outcome, bus, executing, nats
from tests.integration.helpers import eventually, fast_executor
from tests.unit.scheduling import submitted

pytestmark = pytest.mark.chaos
__all__ = ["bus", "nats"]  # fixtures shared with the outage tests


async def _beat(bus: Bus) -> tuple[int, float] | None:
    """(revision, time written) of the node's heartbeat, or None."""
    try:
        kv = await bus.heartbeats()
        entry = await kv.get(subjects.heartbeat_key(NODE))
    except (KeyNotFoundError, NatsError, TimeoutError):
        return None
    if entry.value is None or entry.revision is None:
        return None
    value = json.loads(entry.value)
    assert value["node"] == NODE and value["cpus"] == 2
    return entry.revision, float(value["at"])


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_the_heartbeat_is_rewritten_and_comes_back_after_a_nats_restart(
    nats: Nats, bus: Bus, tmp_path: Path
) -> None:
    settings = fast_executor(nats.server.url, NODE, tmp_path / "state").model_copy(update={"heartbeat_s": 0.2})
    async with executing(settings) as executor:
        first = await eventually(lambda: _beat(bus), what="the first heartbeat")

        async def rewritten() -> bool:
            beat = await _beat(bus)
            return beat is not None and beat[0] > first[0] and beat[1] > first[1]

        await eventually(rewritten, what="the heartbeat rewritten")
        nats.kill()
        await asyncio.sleep(1.0)  # several beats fail meanwhile
        nats.restart()
        back = time.time()

        async def after_restart() -> bool:
            beat = await _beat(bus)
            return beat is not None and beat[1] > back

        await eventually(after_restart, what="a heartbeat written after the restart")
        assert not executor.done()


async def test_an_executor_that_cannot_heartbeat_kills_its_requeue_jobs_only(
    nats: Nats, bus: Bus, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    settings = fast_executor(nats.server.url, NODE, tmp_path / "state").model_copy(
        update={"heartbeat_s": 0.2, "node_lost_after_s": 2.0}
    )
    async with executing(settings):
        await eventually(lambda: _events(bus), what="node registered")
        ids = {}
        for core, requeue in ((0, True), (1, False)):
            job = submitted().model_copy(
                update={"working_directory": str(work), "script": "sleep 120", "time_limit_s": 300, "requeue": requeue}
            )
            ids[requeue] = job_id = await bus.publish(job)
            placed = ev.JobPlaced(job_id=job_id, node=NODE, cores=(core,), memory_mb=100)
            await bus.publish(placed, by_scheduler=True)

            async def started(j: int = job_id) -> bool:
                return await _started(bus, j)

            await eventually(started, what=f"job {job_id} started")
        groups = {}
        for requeue, job_id in ids.items():

            async def group(j: int = job_id) -> int | None:
                return sv.read_pgid(settings.jobs_dir / str(j))

            groups[requeue] = await eventually(group, what="the job's group")

        nats.kill()
        down = time.monotonic()

        async def fenced() -> bool:
            return not _alive(groups[True])

        await eventually(fenced, timeout=20, what="the requeue job killed")
        # Only after a silence, not at the first failed beat (0.2 s): its supervisor fences it once no
        # beat got through for node_lost_after_s - 2 beats (1 s, in whole seconds), else the executor
        # does at node_lost_after_s (2 s).
        assert time.monotonic() - down > 0.5
        assert _alive(groups[False])  # the other one runs on
        nats.restart()

        outcome = await _the_outcome(bus, ids[True])
        assert isinstance(outcome, ev.JobFailed) and outcome.node_fail and outcome.message == FENCED
        assert outcome.run == 0
        assert _alive(groups[False])
        assert not [e for e in await _events(bus, ids[False]) if isinstance(e, ev.TERMINAL_JOB_EVENTS)]
