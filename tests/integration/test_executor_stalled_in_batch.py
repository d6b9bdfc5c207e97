"""An executor stalled (SIGSTOP) for longer than the placements consumer's ack_wait while it starts a
batch of placements: the server delivers the batch's unacked placements again, some while their first
copies are still starting. Every job runs once and has one start (a JobStarted, or in its outcome) and one outcome."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from conductor_contracts import events as ev
from conductor_executor.placements import ACK_WAIT_S
from conductor_platform.bus import Bus
from tests.integration.executor_jobs import counted_job, events_by_job, place_as_one_batch, starts_by_job
from tests.integration.helpers import eventually
from tests.integration.test_executor import NODE, _has, executor_settings
from tests.integration.test_executor_restart import ExecutorProcess

CPUS = 32
JOBS = 32


async def test_an_executor_stalled_past_ack_wait_in_a_batch_starts_each_job_once(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    settings = executor_settings(nats_url, tmp_path, cpus=CPUS, memory="8G")
    ids = [await bus.publish(counted_job(tmp_path, tmp_path, "sleep 1\n")) for _ in range(JOBS)]
    executor = ExecutorProcess(settings, cpus=CPUS, memory="8G")
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        await place_as_one_batch(bus, executor, settings, ids)
        os.kill(executor.process.pid, signal.SIGSTOP)
        stalled = [job_id for job_id in ids if not (settings.jobs_dir / str(job_id)).exists()]
        await asyncio.sleep(ACK_WAIT_S + 2)
        os.kill(executor.process.pid, signal.SIGCONT)

        async def all_ended() -> dict[int, list[ev.Event]] | None:
            found = await events_by_job(bus)
            return found if all(job_id in found for job_id in ids) else None

        await eventually(all_ended, timeout=60, what="every job's outcome")
        await asyncio.sleep(ACK_WAIT_S + 1)  # a copy delivered again would be handled by now
        info = await bus.js.consumer_info(bus.stream, f"executor-{NODE}")
        outcomes = await events_by_job(bus)
        started = await starts_by_job(bus)
    finally:
        executor.kill()
    print(f"\nnot started at the stall: {len(stalled)}; redelivered: {info.num_redelivered}")
    assert stalled, "every placement was handled before the stall: the test proves nothing"
    for job_id in ids:
        assert (tmp_path / f"runs-{job_id}").read_text() == "run\n", f"job {job_id} did not run once"
        assert len(started[job_id]) == 1, f"job {job_id}: {started[job_id]}"
        [outcome] = outcomes[job_id]
        assert isinstance(outcome, ev.JobCompleted), outcome
    assert info.num_ack_pending == 0
