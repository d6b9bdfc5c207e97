"""An executor process SIGKILLed while a batch of placements is in flight, and a job's records
left torn or garbage; the next executor accounts for every job, none runs twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from pathlib import Path

import psutil
import pytest

from conductor_contracts import events as ev
from conductor_executor import supervision as sv
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus
from tests.integration.executor_jobs import events_by_job
from tests.integration.helpers import eventually
from tests.integration.test_executor import NODE, _has, _outcome, executor_settings, running
from tests.integration.test_executor_restart import ExecutorProcess
from tests.unit.scheduling import submitted

CPUS = 16
JOBS = 12


async def _place_batch(bus: Bus, work: Path, scripts: list[str]) -> list[int]:
    ids = []
    for script in scripts:
        job = submitted().model_copy(
            update={"working_directory": str(work), "script": script, "time_limit_s": 60, "name": "tj"}
        )
        ids.append(await bus.publish(job))
    for core, job_id in enumerate(ids):
        placed = ev.JobPlaced(job_id=job_id, node=NODE, cores=(core % CPUS,), memory_mb=10)
        await bus.publish(placed, by_scheduler=True)
    return ids


def _runs(tmp_path: Path, job_id: int) -> int:
    path = tmp_path / f"runs-{job_id}"
    return len(path.read_text().splitlines()) if path.exists() else 0


# 0.0: before any placement is handled (the successor gets them after ack_wait, 5 s).
@pytest.mark.parametrize("kill_after_s", [0.0, 0.1, 0.3, 1.0])
async def test_executor_killed_during_a_batch_of_placements_every_job_accounted_once(
    bus: Bus, nats_url: str, tmp_path: Path, kill_after_s: float
) -> None:
    wide = executor_settings(nats_url, tmp_path, cpus=CPUS, memory="8G")
    executor = ExecutorProcess(wide, cpus=CPUS, memory="8G")
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        # Each job appends to its own file, then ends with a code of its own after a short while.
        scripts = [f"echo run >> {tmp_path}/runs-$CONDUCTOR_JOB_ID\nsleep 0.5\nexit {3 + i}\n" for i in range(JOBS)]
        ids = await _place_batch(bus, tmp_path, scripts)
        await asyncio.sleep(kill_after_s)
    finally:
        executor.kill()
    await asyncio.sleep(1.5)  # whatever started ends while no executor runs
    async with running(bus, wide):

        async def all_ended() -> dict[int, list[ev.Event]] | None:
            found = await events_by_job(bus)
            return found if all(job_id in found for job_id in ids) else None

        found = await eventually(all_ended, timeout=40, what="every job's outcome")
        await asyncio.sleep(1.0)  # a second outcome would come now
        found = await events_by_job(bus)
    for i, job_id in enumerate(ids):
        outcomes = found[job_id]
        assert len(outcomes) == 1, f"job {job_id}: {outcomes}"
        runs = _runs(tmp_path, job_id)
        assert runs <= 1, f"job {job_id} ran {runs} times"
        [outcome] = outcomes
        assert isinstance(outcome, ev.JobFailed), outcome
        if runs == 1 and not outcome.node_fail:
            assert outcome.exit_code == 3 + i, outcome
        if runs == 0:
            assert outcome.node_fail or outcome.exit_code is None, f"job {job_id} never ran, yet {outcome}"
    for job_id in ids:
        started = await _has(bus, ev.JobStarted, job_id)
        assert len(started) <= 1, f"job {job_id} started {len(started)} times"


GATED = "echo run >> {runs}\nuntil [ -e {gate} ]; do sleep 0.05; done\nexit {code}\n"


async def _started_then_killed(bus: Bus, settings: ExecutorSettings, tmp_path: Path, n: int) -> list[int]:
    executor = ExecutorProcess(settings, cpus=CPUS, memory="8G")
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        scripts = [GATED.format(runs=tmp_path / f"runs-{i}", gate=tmp_path / f"go-{i}", code=10 + i) for i in range(n)]
        ids = await _place_batch(bus, tmp_path, scripts)
        for job_id in ids:
            await eventually(lambda job_id=job_id: _has(bus, ev.JobStarted, job_id), what="started")  # type: ignore[misc]
            await eventually(
                lambda job_id=job_id: _async(sv.read_pgid(settings.jobs_dir / str(job_id))),  # type: ignore[misc]
                what="pgid recorded",
            )
    finally:
        executor.kill()
    return ids


async def _async(value: int | None) -> int | None:
    return value


def _bystander() -> subprocess.Popen[bytes]:
    """A process group of its own that is no job's."""
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def test_torn_status_and_garbage_process_records_are_accounted_for(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    wide = executor_settings(nats_url, tmp_path, cpus=CPUS, memory="8G")
    ids = await _started_then_killed(bus, wide, tmp_path, 4)
    folders = [wide.jobs_dir / str(job_id) for job_id in ids]
    groups = [sv.read_pgid(folder) for folder in folders]
    assert all(groups)
    # 0: the job ended; its status's exit line torn (no newline): no exit known.
    (tmp_path / "go-0").touch()
    await eventually(lambda: _async(sv.read_exit(folders[0])), what="job 0 ended")  # type: ignore[arg-type]
    text = (folders[0] / sv.STATUS).read_text()
    (folders[0] / sv.STATUS).write_text(text.rstrip("\n"))
    # 1: process.json truncated in the middle, the job running on.
    raw = (folders[1] / sv.PROCESS).read_bytes()
    (folders[1] / sv.PROCESS).write_bytes(raw[: len(raw) // 2])
    # 2: process.json garbage, the job ended with its exit recorded.
    (tmp_path / "go-2").touch()
    await eventually(lambda: _async(sv.read_exit(folders[2])), what="job 2 ended")  # type: ignore[arg-type]
    (folders[2] / sv.PROCESS).write_bytes(b"\x00\xff{garbage")
    # 3: its supervisor SIGKILLed, the job running on; the status's line torn (no newline) and what
    # is left of it the pid of a process group that is no job's: not to be killed.
    record = sv.read_process(folders[3])
    assert record is not None
    os.kill(record.pid, 9)
    await eventually(lambda: _async(None if _alive(record.pid) else 1), what="supervisor gone")
    bystander = _bystander()
    try:
        (folders[3] / sv.STATUS).write_text(f"pgid {bystander.pid}")
        async with running(bus, wide):
            found = {job_id: await _outcome(bus, job_id) for job_id in ids}
            assert _alive(bystander.pid), "a process group that is no job's was killed"
        for job_id in ids:
            assert len((await events_by_job(bus))[job_id]) == 1
        o0, o1, o2, o3 = (found[job_id] for job_id in ids)
        assert isinstance(o0, ev.JobFailed) and o0.node_fail, o0
        assert isinstance(o1, ev.JobFailed) and o1.node_fail, o1
        assert isinstance(o2, ev.JobFailed) and o2.exit_code == 12 and not o2.node_fail, o2
        assert isinstance(o3, ev.JobFailed) and o3.node_fail, o3
        for i in range(4):
            assert len((tmp_path / f"runs-{i}").read_text().splitlines()) == 1
    finally:
        bystander.kill()
        bystander.wait()
        for group in groups:
            if group is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, 9)


async def test_cancels_before_inside_and_after_a_batch_of_placements(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    wide = executor_settings(nats_url, tmp_path, cpus=CPUS, memory="8G")
    async with running(bus, wide):
        ids = []
        for i in range(8):
            script = f"echo run >> {tmp_path}/runs-$CONDUCTOR_JOB_ID\n" + ("sleep 300\n" if i % 2 else "exit 0\n")
            job = submitted().model_copy(
                update={"working_directory": str(tmp_path), "script": script, "time_limit_s": 60, "name": "tj"}
            )
            ids.append(await bus.publish(job))
        await bus.publish(ev.JobCancelRequested(job_id=ids[1]))  # before its placement
        for core, job_id in enumerate(ids):
            await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(core,), memory_mb=10), by_scheduler=True)
            if core == 3:
                await bus.publish(ev.JobCancelRequested(job_id=ids[3]))  # inside the batch, just after it
            if core == 4:
                await bus.publish(ev.JobCancelRequested(job_id=ids[5]))  # inside, before its placement
        await bus.publish(ev.JobCancelRequested(job_id=ids[7]))  # just after the batch
        found = {job_id: await _outcome(bus, job_id) for job_id in ids}
    for i, job_id in enumerate(ids):
        if i % 2:
            assert isinstance(found[job_id], ev.JobCancelled), (i, found[job_id])
        else:
            assert isinstance(found[job_id], ev.JobCompleted), (i, found[job_id])
        assert _runs(tmp_path, job_id) <= 1
    assert _runs(tmp_path, ids[1]) == 0, "a job cancelled before its placement ran"
    assert _runs(tmp_path, ids[5]) == 0, "a job cancelled before its placement ran"
