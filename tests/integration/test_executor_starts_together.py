"""The placements of one batch start together (a few at a time), each on the cores it was given. (A
NodeLost in the batch ends the placements before it without their starting:
``test_executor_placed_before_lost.py``.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conductor_contracts import events as ev
from conductor_executor import service
from conductor_executor.placements import ensure_consumer
from conductor_executor.service import Executor
from conductor_platform.bus import Bus
from tests.integration.helpers import read_log, starts
from tests.integration.test_executor import _outcome, executor_settings, running
from tests.unit.scheduling import submitted


class _SlowStarts:
    """``Executor._start_job`` (it runs in a worker thread) made slow, counting the starts in flight."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay_s: float) -> None:
        self.delay_s, self.in_flight, self.most = delay_s, 0, 0
        self._lock = threading.Lock()
        start_job = Executor._start_job

        def slow(executor: Executor, *args: Any) -> Any:
            with self._lock:
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
            try:
                time.sleep(self.delay_s)  # a loaded machine's disk and fork
                return start_job(executor, *args)
            finally:
                with self._lock:
                    self.in_flight -= 1

        monkeypatch.setattr(Executor, "_start_job", slow)


async def _submit(bus: Bus, work: Path, script: str = "true\n") -> int:
    return await bus.publish(submitted().model_copy(update={"working_directory": str(work), "script": script}))


async def test_the_placements_of_a_batch_start_together_a_few_at_a_time(
    bus: Bus, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = executor_settings(nats_url, tmp_path, cpus=8)
    await ensure_consumer(bus, settings.node)  # all is stored before the executor's first fetch
    ids = [await _submit(bus, tmp_path / "work") for _ in range(6)]
    for core, job_id in enumerate(ids):
        placed = ev.JobPlaced(job_id=job_id, node=settings.node, cores=(core,), memory_mb=1)
        await bus.publish(placed, by_scheduler=True)
    slow = _SlowStarts(monkeypatch, 0.3)
    async with running(bus, settings):
        outcomes = [await _outcome(bus, job_id) for job_id in ids]
    assert all(isinstance(outcome, ev.JobCompleted) for outcome in outcomes)
    assert slow.most == service._STARTS_AT_ONCE  # together, and never more than that at once
    # A job's start time is its spawn's, whenever its placement's turn to report came.
    log = await read_log(bus)
    started = {s.job_id: s.occurred_at for s in starts(e for _, _, e in log)}
    assert all(started[o.job_id] <= o.occurred_at for o in outcomes if isinstance(o, ev.JobCompleted))


async def test_placements_started_together_never_take_more_than_the_node_has(
    bus: Bus, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = executor_settings(nats_url, tmp_path, cpus=2)
    await ensure_consumer(bus, settings.node)
    ids = [await _submit(bus, tmp_path / "work") for _ in range(2)]
    # Both on core 0 (a scheduler that was wrong, or a node that came back smaller): one is refused.
    for job_id in ids:
        placed = ev.JobPlaced(job_id=job_id, node=settings.node, cores=(0,), memory_mb=1)
        await bus.publish(placed, by_scheduler=True)
    _SlowStarts(monkeypatch, 0.3)
    async with running(bus, settings):
        outcomes = [await _outcome(bus, job_id) for job_id in ids]
    # Which one comes down to which look-ups are answered first: started together, either may.
    completed = [o for o in outcomes if isinstance(o, ev.JobCompleted)]
    refused = [o for o in outcomes if isinstance(o, ev.JobFailed) and "does not fit" in (o.message or "")]
    assert len(completed) == len(refused) == 1


@pytest.mark.parametrize("cancels", ["none", "another job's", "one of the batch's"])
async def test_a_batch_looks_its_cancels_up_once_unless_one_is_stored(
    bus: Bus, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cancels: str
) -> None:
    """A cancel stored after a batch's earliest submission makes each of its jobs look its own up; with
    none, one look-up answers for the whole batch (a request to nats-server fewer per job)."""
    settings = executor_settings(nats_url, tmp_path, cpus=8)
    await ensure_consumer(bus, settings.node)  # all is stored before the executor's first fetch
    ids = [await _submit(bus, tmp_path / "work", "echo ran > ran-$SLURM_JOB_ID\n") for _ in range(5)]
    if cancels == "another job's":
        other = await _submit(bus, tmp_path / "work")  # never placed here
        await bus.publish(ev.JobCancelRequested(job_id=other))
    elif cancels == "one of the batch's":
        await bus.publish(ev.JobCancelRequested(job_id=ids[2]))
    for core, job_id in enumerate(ids):
        placed = ev.JobPlaced(job_id=job_id, node=settings.node, cores=(core,), memory_mb=1)
        await bus.publish(placed, by_scheduler=True)
    asked: list[int] = []
    own_lookup = Executor.cancel_requested

    async def counted(executor: Executor, job_id: int) -> bool:
        asked.append(job_id)
        return await own_lookup(executor, job_id)

    monkeypatch.setattr(Executor, "cancel_requested", counted)
    async with running(bus, settings):
        outcomes = {job_id: await _outcome(bus, job_id) for job_id in ids}
    cancelled = {ids[2]} if cancels == "one of the batch's" else set()
    ran = {int(path.name.removeprefix("ran-")) for path in (tmp_path / "work").glob("ran-*")}
    assert ran == set(ids) - cancelled
    assert {j for j, o in outcomes.items() if isinstance(o, ev.JobCancelled)} == cancelled
    assert sorted(asked) == ([] if cancels == "none" else ids)


async def test_a_placement_naming_no_submission_fails_alone_not_its_batch(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    """Anyone who can publish on the placement subject can name job -5: the batch's one cancel look-up
    must not fail on it and take every placement of the batch down with it."""
    settings = executor_settings(nats_url, tmp_path, cpus=8, max_deliveries=2)
    await ensure_consumer(bus, settings.node)  # all is stored before the executor's first fetch
    ids = [await _submit(bus, tmp_path / "work") for _ in range(3)]
    for core, job_id in enumerate([-5, *ids]):
        placed = ev.JobPlaced(job_id=job_id, node=settings.node, cores=(core,), memory_mb=1)
        await bus.publish(placed, by_scheduler=True)
    async with running(bus, settings):
        outcomes = [await _outcome(bus, job_id) for job_id in ids]
    assert all(isinstance(outcome, ev.JobCompleted) for outcome in outcomes), outcomes
