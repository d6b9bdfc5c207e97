"""The executor's nats-server SIGKILLed while a batch of placements is being fetched and
looked up (the cancel and submission look-ups of the batch in flight), then back on the same store:
every job ends once, none runs twice, none is left without an outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conductor_contracts import events as ev
from conductor_platform.bus import Bus
from tests.chaos.test_executor_nats_outage import NODE, Nats, _events, _settings, _the_outcome, bus, executing, nats
from tests.integration.helpers import eventually, starts
from tests.unit.scheduling import submitted

__all__ = ["bus", "nats"]  # fixtures

pytestmark = pytest.mark.chaos

JOBS = 16


@pytest.mark.parametrize("kill_after_s", [None, 0.0, 0.05, 1.0])
async def test_nats_killed_amid_a_batch_of_placements(
    nats: Nats, bus: Bus, tmp_path: Path, kill_after_s: float | None
) -> None:
    settings = _settings(nats, tmp_path).model_copy(update={"cpus": JOBS, "memory": "16G"})
    ids = []
    for i in range(JOBS):
        script = f"echo run >> {tmp_path}/runs-$CONDUCTOR_JOB_ID\nexit {i % 3}\n"
        job = submitted().model_copy(update={"working_directory": str(tmp_path), "script": script, "time_limit_s": 60})
        ids.append(await bus.publish(job))
    await bus.publish(ev.JobCancelRequested(job_id=ids[5]))
    async with executing(settings):

        async def registered() -> bool:
            return any(isinstance(e, ev.NodeRegistered) for e in await _events(bus))

        await eventually(registered, what="node registered")
        placements = [
            ev.JobPlaced(job_id=job_id, node=NODE, cores=(core,), memory_mb=10) for core, job_id in enumerate(ids)
        ]
        await asyncio.gather(*(bus.publish(p, by_scheduler=True) for p in placements))
        if kill_after_s is not None:  # None: the same without an outage, for comparison
            await asyncio.sleep(kill_after_s)
            nats.kill()
            await asyncio.sleep(1.0)
            nats.restart()
        found = {job_id: await _the_outcome(bus, job_id) for job_id in ids}
    for i, job_id in enumerate(ids):
        runs = tmp_path / f"runs-{job_id}"
        count = len(runs.read_text().splitlines()) if runs.exists() else 0
        assert count <= 1, f"job {job_id} ran {count} times"
        outcome = found[job_id]
        if i == 5:
            assert isinstance(outcome, ev.JobCancelled) and count == 0, outcome
        elif count == 1 and not (isinstance(outcome, ev.JobFailed) and outcome.node_fail):
            assert getattr(outcome, "exit_code", None) == i % 3, (i, outcome)
        assert len(starts(await _events(bus, job_id))) <= 1  # a JobStarted, or a start in the outcome
