"""The executor on a real JetStream, running real bash: outcomes, limits, cancel, no double run."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor import compiled
from conductor_executor import supervision as sv
from conductor_executor.outbox import Outbox
from conductor_executor.service import Executor, run
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus
from tests.disks import fill, tmpfs
from tests.integration.helpers import eventually, starts
from tests.unit.scheduling import submitted

NODE = "testnode"


def executor_settings(nats_url: str, tmp_path: Path, **overrides: Any) -> ExecutorSettings:
    defaults: dict[str, Any] = {
        "nats_url": nats_url,
        "node": NODE,
        "cpus": 2,
        "memory": "1G",
        "state_dir": tmp_path / "state",
        "kill_grace_s": 1,
        "memory_poll_s": 0.2,
        "retry_first_s": 0.05,
        "retry_max_s": 0.2,
        # What a test starts it ends: jobs do not outlive the test's executor.
        "stop_jobs_on_exit": True,
    }
    return ExecutorSettings(**(defaults | overrides))


@asynccontextmanager
async def running(bus: Bus, settings: ExecutorSettings) -> AsyncIterator[ExecutorSettings]:
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        yield settings
    finally:
        stop.set()
        await task


@pytest.fixture
async def executor(bus: Bus, nats_url: str, tmp_path: Path) -> AsyncIterator[ExecutorSettings]:
    async with running(bus, executor_settings(nats_url, tmp_path)) as settings:
        yield settings


async def _events(bus: Bus) -> list[ev.Event]:
    """The log's events, past the garbage some tests put in it."""
    info = await bus.js.stream_info(subjects.STREAM)
    out = []
    for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
        with contextlib.suppress(ValueError):
            out.append(ev.decode((await bus.js.get_msg(subjects.STREAM, seq=seq)).data or b""))
    return out


async def _has(bus: Bus, kind: type, job_id: int | None = None) -> list[ev.Event]:
    return [e for e in await _events(bus) if isinstance(e, kind) and getattr(e, "job_id", None) in (job_id, None)]


async def _starts(bus: Bus, job_id: int) -> list[ev.JobStarted]:
    """The job's runs' starts: its JobStarted, or what its outcome carries for a short run."""
    return [s for s in starts(await _events(bus)) if s.job_id == job_id]


async def _submit_and_place(bus: Bus, workdir: Path, script: str, time_limit_s: int | None = 60) -> int:
    job = submitted().model_copy(
        update={"working_directory": str(workdir), "script": script, "time_limit_s": time_limit_s, "name": "tj"}
    )
    job_id = await bus.publish(job)
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(1,), memory_mb=100), by_scheduler=True)
    return job_id


async def _outcome(bus: Bus, job_id: int) -> ev.Event:
    kinds = ev.TERMINAL_JOB_EVENTS

    async def probe() -> list[ev.Event]:
        return [e for e in await _events(bus) if isinstance(e, kinds) and e.job_id == job_id]

    [outcome] = await eventually(probe, what=f"outcome of job {job_id}")
    return outcome


async def test_runs_the_script_with_slurm_environment(bus: Bus, executor: ExecutorSettings, tmp_path: Path) -> None:
    script = (
        '#!/bin/bash\necho "id=$SLURM_JOB_ID name=$SLURM_JOB_NAME cid=$CONDUCTOR_JOB_ID pwd=$(pwd)"\n'
        'echo oops >&2\necho "cpus=$(nproc)"\n'
    )
    job_id = await _submit_and_place(bus, tmp_path / "work", script)
    outcome = await _outcome(bus, job_id)
    assert isinstance(outcome, ev.JobCompleted) and outcome.exit_code == 0
    text = (tmp_path / "work" / f"slurm-{job_id}.out").read_text()
    assert f"id={job_id} name=tj cid={job_id} pwd={tmp_path / 'work'}" in text
    assert "cpus=1\n" in text  # pinned to the one core it was given, children included
    assert "oops" in text  # no standard_error given: stderr joins stdout, as in Slurm
    [started] = await _starts(bus, job_id)
    assert isinstance(started, ev.JobStarted) and started.pid > 0
    # Queued by the job's monitor, after the record: which then says so (a restart owes nothing).
    record = sv.read_process(executor.jobs_dir / str(job_id))
    assert record is not None and record.announced and record.pid == started.pid


@pytest.mark.parametrize("pins", [True, False], ids=["supervisor-moves-itself", "thread-moves"])
async def test_a_job_cannot_choose_its_cpus_through_the_supervisors_variable(
    bus: Bus, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pins: bool
) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU here: nothing to choose")
    if not pins:  # a compiled supervisor that can move itself, started as one that cannot
        monkeypatch.setattr("conductor_executor.compiled.pins", lambda *_: False)
    others = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
    script = f'grep Cpus_allowed_list /proc/self/status\necho "told: ${{{sv.CPUS}-none}}"\n'
    job = submitted().model_copy(
        update={"working_directory": str(tmp_path), "script": script, "environment": {sv.CPUS: others}}
    )
    async with running(bus, executor_settings(nats_url, tmp_path)):
        job_id = await bus.publish(job)
        await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(1,), memory_mb=100), by_scheduler=True)
        assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)
    text = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert text.splitlines()[0].split() == ["Cpus_allowed_list:", str(sorted(os.sched_getaffinity(0))[1])]
    assert "told: none" in text


async def test_nonzero_exit_is_failed_with_its_code(bus: Bus, executor: ExecutorSettings, tmp_path: Path) -> None:
    outcome = await _outcome(bus, await _submit_and_place(bus, tmp_path, "exit 3"))
    assert isinstance(outcome, ev.JobFailed) and outcome.exit_code == 3


async def test_time_limit_kills_the_whole_group(bus: Bus, executor: ExecutorSettings, tmp_path: Path) -> None:
    script = f"sleep 300 & echo $! > {tmp_path}/child.pid\nsleep 300\n"
    outcome = await _outcome(bus, await _submit_and_place(bus, tmp_path, script, time_limit_s=1))
    assert isinstance(outcome, ev.JobTimedOut)
    child = int((tmp_path / "child.pid").read_text())
    await eventually(lambda: _gone(child), what="background child killed")


async def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return True
    return status == "Z"


async def test_cancel_of_a_running_job(bus: Bus, executor: ExecutorSettings, tmp_path: Path) -> None:
    job_id = await _submit_and_place(bus, tmp_path, "sleep 300")
    await eventually(lambda: _starts(bus, job_id), what="started")
    await bus.publish(ev.JobCancelRequested(job_id=job_id))
    outcome = await _outcome(bus, job_id)
    assert isinstance(outcome, ev.JobCancelled) and outcome.node == NODE


# Killed by its executor, the job kills its supervisor before that can record its exit: the reason
# the executor recorded before signalling still says how it ended (not NODE_FAIL, which requeues).
_KILLS_ITS_SUPERVISOR = "trap 'kill -9 $PPID; exit 0' TERM\nsleep 300 &\nwait\n"


async def test_a_timed_out_job_that_kills_its_supervisor_is_timed_out(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path
) -> None:
    job_id = await _submit_and_place(bus, tmp_path, _KILLS_ITS_SUPERVISOR, time_limit_s=1)
    outcome = await _outcome(bus, job_id)
    assert isinstance(outcome, ev.JobTimedOut) and outcome.exit_code is None


async def test_a_cancelled_job_that_kills_its_supervisor_is_cancelled(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path
) -> None:
    job_id = await _submit_and_place(bus, tmp_path, _KILLS_ITS_SUPERVISOR)
    await eventually(lambda: _starts(bus, job_id), what="started")
    await bus.publish(ev.JobCancelRequested(job_id=job_id))
    outcome = await _outcome(bus, job_id)
    assert isinstance(outcome, ev.JobCancelled) and outcome.exit_code is None


@pytest.mark.parametrize("form", [compiled.AUTO, compiled.SHELL])
@pytest.mark.parametrize("ended_by", ["time limit", "cancel"])
async def test_a_job_that_stops_its_supervisor_still_ends(
    bus: Bus, nats_url: str, tmp_path: Path, form: str, ended_by: str
) -> None:
    # SIGSTOP, which the job may send its supervisor: the job's group was killed, and the executor
    # waited for the stopped supervisor's record for ever, past the time limit and the cancel, the
    # job RUNNING and its cores held.
    script = f"echo $PPID > {tmp_path}/supervisor.pid\nkill -STOP $PPID\nsleep 300\n"
    async with running(bus, executor_settings(nats_url, tmp_path, job_supervisor=form)):
        job_id = await _submit_and_place(bus, tmp_path, script, time_limit_s=1 if ended_by == "time limit" else 60)
        supervisor = await eventually(lambda: _stopped(tmp_path / "supervisor.pid"), what="supervisor stopped")
        if ended_by == "cancel":
            await bus.publish(ev.JobCancelRequested(job_id=job_id))
        outcome = await _outcome(bus, job_id)
        expected = ev.JobTimedOut if ended_by == "time limit" else ev.JobCancelled
        assert isinstance(outcome, expected) and outcome.exit_code is None
        await eventually(lambda: _gone(supervisor), what="supervisor gone")


async def _stopped(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` once that process is stopped (state T)."""
    try:
        pid = int(pid_file.read_text())
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError):
        return None
    return pid if state == "T" else None


@pytest.mark.parametrize("inside", ["outbox/000000000001-1-JobCompleted.json", "jobs/99999"])
async def test_a_working_directory_inside_the_executors_folder_fails_the_job_and_makes_nothing(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path, inside: str
) -> None:
    # The executor would make it: a folder of an event's name in its outbox, or of a later job's.
    work = executor.state_dir / inside
    outcome = await _outcome(bus, await _submit_and_place(bus, work, "touch ran"))
    assert isinstance(outcome, ev.JobFailed) and not outcome.node_fail
    assert "inside the executor's own folder" in (outcome.message or "")
    assert not work.exists()
    assert not (work / "ran").exists()


async def test_a_cancel_stored_before_the_placement_wins(bus: Bus, executor: ExecutorSettings, tmp_path: Path) -> None:
    job = submitted().model_copy(update={"working_directory": str(tmp_path), "script": "touch ran"})
    job_id = await bus.publish(job)
    await bus.publish(ev.JobCancelRequested(job_id=job_id))
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(0,), memory_mb=1), by_scheduler=True)
    outcome = await _outcome(bus, job_id)
    assert isinstance(outcome, ev.JobCancelled)
    assert not (tmp_path / "ran").exists()


async def test_a_redelivered_placement_does_not_run_twice(bus: Bus, executor: ExecutorSettings, tmp_path: Path) -> None:
    job_id = await _submit_and_place(bus, tmp_path, "echo run >> runs.txt")
    await _outcome(bus, job_id)
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(0,), memory_mb=1), by_scheduler=True)
    marker = await _submit_and_place(bus, tmp_path, "true")  # handled after the duplicate, in order
    await _outcome(bus, marker)
    assert (tmp_path / "runs.txt").read_text() == "run\n"
    assert len(await _starts(bus, job_id)) == 1


async def test_a_job_over_its_memory_is_killed_out_of_memory(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path
) -> None:
    # The allocation happens in a child of the script: the whole tree counts.
    script = f'{sys.executable} -c "b = bytearray(400 * 1024 * 1024); import time; time.sleep(60)"\n'
    outcome = await _outcome(bus, await _submit_and_place(bus, tmp_path, script))  # placed with 100M
    assert isinstance(outcome, ev.JobOutOfMemory)


async def test_a_job_within_its_memory_completes(bus: Bus, executor: ExecutorSettings, tmp_path: Path) -> None:
    script = f'{sys.executable} -c "b = bytearray(20 * 1024 * 1024); import time; time.sleep(1.5)"\n'
    outcome = await _outcome(bus, await _submit_and_place(bus, tmp_path, script))
    assert isinstance(outcome, ev.JobCompleted)


async def test_output_is_kept_in_the_object_store(bus: Bus, executor: ExecutorSettings, tmp_path: Path) -> None:
    job = submitted().model_copy(
        update={"working_directory": str(tmp_path), "script": "echo out; echo err >&2", "standard_error": "e.txt"}
    )
    job_id = await bus.publish(job)
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(0,), memory_mb=100), by_scheduler=True)
    await _outcome(bus, job_id)
    store = await bus.outputs()
    assert (await store.get(subjects.output_object(job_id, "stdout"))).data == b"out\n"
    assert (await store.get(subjects.output_object(job_id, "stderr"))).data == b"err\n"


async def test_duplicated_placements_and_cancels_never_run_a_job_twice(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    async with running(bus, executor_settings(nats_url, tmp_path, cpus=16)):
        await _place_duplicates_and_cancels(bus, tmp_path)


async def _place_duplicates_and_cancels(bus: Bus, tmp_path: Path) -> None:
    ids = []
    for i in range(15):
        job = submitted().model_copy(
            update={"working_directory": str(tmp_path), "script": "echo $SLURM_JOB_ID >> runs.txt; sleep 0.2"}
        )
        job_id = await bus.publish(job)
        ids.append(job_id)
        if i % 3 == 0:
            await bus.publish(ev.JobCancelRequested(job_id=job_id))  # before its placement: never runs
        for _ in range(3):  # a scheduler retry, a redelivery...: the same placement again
            # A core of its own: the executor refuses a placement on a core a running job holds.
            await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(i,), memory_mb=50), by_scheduler=True)
        if i % 3 == 1:
            await bus.publish(ev.JobCancelRequested(job_id=job_id))  # while it may be running
    outcomes = {job_id: await _outcome(bus, job_id) for job_id in ids}
    runs = (tmp_path / "runs.txt").read_text().split()
    assert len(runs) == len(set(runs)), "a job ran twice"
    assert not {str(j) for j in ids[::3]} & set(runs), "a job cancelled before its placement ran"
    assert all(isinstance(outcomes[j], ev.JobCancelled) for j in ids[::3])
    assert all(isinstance(outcomes[j], ev.JobCompleted) for j in ids[2::3])


async def _failed(bus: Bus, job_id: int) -> ev.JobFailed:
    outcome = await _outcome(bus, job_id)
    assert isinstance(outcome, ev.JobFailed), outcome
    assert not await _starts(bus, job_id)
    return outcome


@pytest.mark.parametrize(
    ("update", "error"),
    [
        ({"environment": {"GOOD": "1", "BAD": "a\x00b"}}, "null byte"),
        ({"working_directory": "/tmp/a\x00b"}, "null byte"),
        ({"working_directory": "/dev/null/work"}, "Not a directory"),
    ],
    ids=["nul-in-environment", "nul-in-working-directory", "working-directory-under-a-file"],
)
async def test_a_job_that_cannot_start_ends_failed_with_why(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path, update: dict[str, Any], error: str
) -> None:
    # Crafted past the gateway, which would refuse some of these: the executor must not trust it.
    job = submitted().model_copy(update={"working_directory": str(tmp_path), "script": "touch ran"} | update)
    job_id = await bus.publish(job)
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(0,), memory_mb=100), by_scheduler=True)
    outcome = await _failed(bus, job_id)
    assert outcome.message.startswith("could not start the job") and error in outcome.message, outcome.message
    assert outcome.exit_code is None and not outcome.node_fail
    # The executor goes on: the next job runs.
    assert isinstance(await _outcome(bus, await _submit_and_place(bus, tmp_path, "true")), ev.JobCompleted)


async def test_a_placement_that_does_not_fit_the_node_is_refused(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path
) -> None:
    holder = await _submit_and_place(bus, tmp_path, "sleep 300")  # core 1, 100M
    await eventually(lambda: _starts(bus, holder), what="started")
    misfits = {
        "cores [2] are outside this node's 0..1": ((0, 2), 10),
        f"cores [1] are in use by job(s) {holder}": ((1,), 10),
        "2000M of memory asked, 924M of 1024M left": ((0,), 2000),
    }
    placed = {}
    for why, (cores, memory_mb) in misfits.items():
        job = submitted().model_copy(update={"working_directory": str(tmp_path), "script": "echo ran >> ran.txt"})
        job_id = await bus.publish(job)
        await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=cores, memory_mb=memory_mb), by_scheduler=True)
        placed[job_id] = why
    for job_id, why in placed.items():
        outcome = await _failed(bus, job_id)
        assert outcome.message == f"placement does not fit this node: {why}"
        # Nothing of it ran: the scheduler places it again (it ended FAILED when the node had shrunk).
        assert outcome.never_started and outcome.node_fail
    assert not (tmp_path / "ran.txt").exists()
    # What does fit still runs beside the holder.
    job = submitted().model_copy(update={"working_directory": str(tmp_path), "script": "echo ran >> ran.txt"})
    fits = await bus.publish(job)
    await bus.publish(ev.JobPlaced(job_id=fits, node=NODE, cores=(0,), memory_mb=900), by_scheduler=True)
    assert isinstance(await _outcome(bus, fits), ev.JobCompleted)
    await bus.publish(ev.JobCancelRequested(job_id=holder))
    assert isinstance(await _outcome(bus, holder), ev.JobCancelled)


async def _consumer_settled(bus: Bus) -> bool:
    info = await bus.js.consumer_info(subjects.STREAM, f"executor-{NODE}")
    return bool(info.num_ack_pending == 0 and info.num_pending == 0)


async def test_a_poison_message_is_dropped_and_the_executor_goes_on(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path
) -> None:
    await bus.js.publish(subjects.placements_for(NODE), b"\x00 not an event", stream=subjects.STREAM)
    job_id = await _submit_and_place(bus, tmp_path, "true")
    assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)
    # Not redelivered forever: terminated, nothing left pending on the executor's consumer.
    await eventually(lambda: _consumer_settled(bus), what="poison message terminated")


async def test_a_placement_failing_every_delivery_is_given_up_and_its_job_reported(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path
) -> None:
    # Its job id is no JobSubmitted: looking the job up fails on every delivery.
    not_a_job = await bus.publish(ev.NodeRegistered(node="elsewhere", cpus=1, memory_mb=100))
    await bus.publish(ev.JobPlaced(job_id=not_a_job, node=NODE, cores=(0,), memory_mb=10), by_scheduler=True)
    outcome = await _failed(bus, not_a_job)
    assert f"({executor.max_deliveries} tries)" in outcome.message and "not a JobSubmitted" in outcome.message
    await eventually(lambda: _consumer_settled(bus), what="placement terminated")
    job_id = await _submit_and_place(bus, tmp_path, "true")
    assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)


def _folder_refused(self: Executor, job_id: int, run: int) -> Path:
    """A full disk (no blocks, no inodes), as ``Executor._make_folder`` meets it."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.folder(job_id, run)))


async def test_a_placement_whose_folder_the_disk_refuses_still_ends_its_job(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk (no blocks, no inodes) refuses the job's folder at every delivery, and then in the
    # give-up that reports the failure: the job stayed RUNNING for ever and held its cores.
    with monkeypatch.context() as patched:
        patched.setattr(Executor, "_make_folder", _folder_refused)
        job_id = await _submit_and_place(bus, tmp_path, "touch ran")
        outcome = await _failed(bus, job_id)
        assert f"({executor.max_deliveries} tries)" in outcome.message and "No space left" in outcome.message
        await eventually(lambda: _consumer_settled(bus), what="placement terminated")
    # Space again. The same placement once more (as a redelivery after a failed terminate would be):
    # its failure was reported, so it is not started; the next job runs.
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(1,), memory_mb=100), by_scheduler=True)
    after = await _submit_and_place(bus, tmp_path, "true")
    assert isinstance(await _outcome(bus, after), ev.JobCompleted)
    assert not (tmp_path / "ran").exists() and not await _starts(bus, job_id)


async def test_a_node_whose_disk_refuses_jobs_files_asks_once_to_be_drained(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every job placed here fails the same way, and frees its cores a few seconds after its placement:
    # left UP, the node took jobs faster than any other and failed them all.
    with monkeypatch.context() as patched:
        patched.setattr(Executor, "_make_folder", _folder_refused)
        first = await _submit_and_place(bus, tmp_path, "true")
        second = await _submit_and_place(bus, tmp_path, "true")
        await _failed(bus, first)
        await _failed(bus, second)
    drains = [e for e in await _events(bus) if isinstance(e, ev.NodeDrainRequested)]
    assert [(d.node, d.by_node) for d in drains] == [(NODE, True)]  # one for the burst
    assert "No space left on device" in drains[0].reason and str(executor.jobs_dir) in drains[0].reason
    stored = await bus.js.get_last_msg(subjects.STREAM, subjects.subject_for(drains[0]))
    assert stored.subject == f"conductor.exec.{NODE}.node.drain"


async def test_a_state_disk_full_of_blocks_drains_the_node(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    # Its inodes left, its blocks gone: the job's folder is made, its script cannot be written, and
    # that write's ENOSPC names no file, so the node was not drained.
    with tmpfs(tmp_path / "state", "4m") as state:
        async with running(bus, executor_settings(nats_url, tmp_path, state_dir=state)) as settings:
            ballast = fill(state)
            job_id = await _submit_and_place(bus, tmp_path, "true")
            assert "No space left on device" in (await _failed(bus, job_id)).message
            [drain] = await eventually(lambda: _has(bus, ev.NodeDrainRequested), what="the node drained")
            assert isinstance(drain, ev.NodeDrainRequested) and drain.by_node and str(settings.jobs_dir) in drain.reason
            ballast.unlink()


async def test_a_full_disk_under_a_path_the_job_names_fails_that_job_only(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job's working directory is the job's: its disk failing says nothing of the node.
    def full(path: str, own: Path | None) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    with monkeypatch.context() as patched:
        patched.setattr("conductor_executor.service.make_working_directory", full)
        job_id = await _submit_and_place(bus, tmp_path / "work", "true")
        assert "No space left on device" in (await _failed(bus, job_id)).message
    after = await _submit_and_place(bus, tmp_path, "true")
    assert isinstance(await _outcome(bus, after), ev.JobCompleted)
    assert not await _has(bus, ev.NodeDrainRequested)


async def test_a_placement_given_up_while_the_outbox_is_refused_too_comes_back_and_runs(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing of the give-up reaches the disk: the placement is delivered again, not terminated (its
    # job would end nowhere), and once the disk takes files again the job runs.
    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        patched.setattr(Executor, "_make_folder", full)
        patched.setattr(Outbox, "put", full)
        job_id = await _submit_and_place(bus, tmp_path, "touch ran")
        await asyncio.sleep(2)  # well past max_deliveries at these retry delays
        assert not await _has(bus, ev.JobFailed, job_id)
    assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)
    assert (tmp_path / "ran").exists()


async def test_a_message_on_the_cancel_subject_stored_before_the_job_does_not_cancel_it(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path
) -> None:
    # A job's id is the stream sequence of its submission: the ids ahead are known to anyone.
    ahead = (await bus.js.stream_info(subjects.STREAM)).state.last_seq + 3
    await bus.js.publish(subjects.cancel_of(ahead), b"garbage", stream=subjects.STREAM)
    await bus.publish(ev.JobCancelRequested(job_id=ahead))  # a real-looking one, but before the job
    job = submitted().model_copy(update={"working_directory": str(tmp_path), "script": "touch ran"})
    job_id = await bus.publish(job)
    assert job_id == ahead
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(0,), memory_mb=10), by_scheduler=True)
    assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)
    assert (tmp_path / "ran").exists()


async def test_a_cancel_behind_garbage_on_its_subject_still_wins(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path
) -> None:
    job = submitted().model_copy(update={"working_directory": str(tmp_path), "script": "touch ran"})
    job_id = await bus.publish(job)
    await bus.publish(ev.JobCancelRequested(job_id=job_id))
    await bus.js.publish(subjects.cancel_of(job_id), b"garbage after it", stream=subjects.STREAM)
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(0,), memory_mb=10), by_scheduler=True)
    assert isinstance(await _outcome(bus, job_id), ev.JobCancelled)
    assert not (tmp_path / "ran").exists()


async def test_a_job_its_executor_died_before_recording_is_killed_and_reported_node_fail(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    settings = executor_settings(nats_url, tmp_path)
    script = f"sleep 300 & echo $! > {tmp_path}/child.pid\nsleep 300\n"
    job_id = await bus.publish(submitted().model_copy(update={"working_directory": str(tmp_path), "script": script}))
    dead = Executor(settings)
    dead._bus = bus
    await dead.start(ev.JobPlaced(job_id=job_id, node=NODE, cores=(0,), memory_mb=10))
    pid = dead.running[job_id].pid
    try:
        # SIGKILLed the moment the job was spawned: nothing of that executor runs on, and the job's
        # process.json was never written.
        for task in list(dead.monitors):
            task.cancel()
        (settings.jobs_dir / str(job_id) / "process.json").unlink()
        child_pid = tmp_path / "child.pid"
        await eventually(lambda: _exists(child_pid), what="the job's background child started")
        child = int(child_pid.read_text())
        async with running(bus, settings):
            failed = await _outcome(bus, job_id)
            assert isinstance(failed, ev.JobFailed) and failed.node_fail
            await eventually(lambda: _gone(pid), what="the unrecorded job killed")
            await eventually(lambda: _gone(child), what="its whole group killed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


async def _exists(path: Path) -> bool:
    return path.exists() and bool(path.read_text().strip())


async def test_a_fifo_planted_where_a_job_writes_its_output_fails_that_job_not_the_executor(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path
) -> None:
    # Job ids are predictable: an earlier job can plant a FIFO at a later job's slurm-<id>.out.
    ahead = (await bus.js.stream_info(subjects.STREAM)).state.last_seq + 1
    os.mkfifo(tmp_path / f"slurm-{ahead}.out")
    job = submitted().model_copy(update={"working_directory": str(tmp_path), "script": "touch ran"})
    assert await bus.publish(job) == ahead
    await bus.publish(ev.JobPlaced(job_id=ahead, node=NODE, cores=(0,), memory_mb=10), by_scheduler=True)
    outcome = await _failed(bus, ahead)
    assert outcome.message.startswith("could not start the job") and "No such device" in outcome.message
    assert not (tmp_path / "ran").exists()
    assert isinstance(await _outcome(bus, await _submit_and_place(bus, tmp_path, "true")), ev.JobCompleted)


async def test_a_cancel_on_another_jobs_subject_cancels_nothing(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path
) -> None:
    job_id = await _submit_and_place(bus, tmp_path, "sleep 1; touch finished")
    # Names the running job in its body, but sits on another job's cancel subject.
    forged = ev.JobCancelRequested(job_id=job_id)
    await bus.js.publish(subjects.cancel_of(job_id + 1000), ev.encode(forged), stream=subjects.STREAM)
    assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)
    assert (tmp_path / "finished").exists()
    await eventually(lambda: _consumer_settled(bus), what="the forged cancel terminated")


async def test_a_job_that_removes_the_compiled_supervisor_does_not_stop_the_next_ones_starting(
    bus: Bus, nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jobs run as the executor's user: ``rm -rf ~/.cache`` takes the compiled supervisor with it.
    if compiled.compiler() is None:
        pytest.skip("no C compiler here: executors use the shell supervisor")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    async with running(bus, executor_settings(nats_url, tmp_path)):
        assert list((cache / "scns-conductor").glob("conductor-job-*")), "the compiled supervisor was not built"
        first = await _submit_and_place(bus, tmp_path, f'rm -rf "{cache}/scns-conductor"\n')
        assert isinstance(await _outcome(bus, first), ev.JobCompleted)
        second = await _submit_and_place(bus, tmp_path, "exit 3\n")
        failed = await _outcome(bus, second)
        assert isinstance(failed, ev.JobFailed) and failed.exit_code == 3 and not failed.node_fail


async def test_a_stop_while_the_supervisor_builds_ends_the_executor_at_once(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = tmp_path / "cc"
    stuck.write_text("#!/bin/sh\nsleep 300\n")  # a compiler that never ends
    stuck.chmod(0o755)
    (tmp_path / "cache").mkdir(mode=0o700)
    monkeypatch.setenv("CC", str(stuck))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    stop = asyncio.Event()
    task = asyncio.create_task(run(executor_settings(nats_url, tmp_path), stop))
    await asyncio.sleep(0.5)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_a_job_too_large_to_start_does_not_turn_the_compiled_supervisor_off(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path
) -> None:
    # exec refuses a string over 128 KiB (E2BIG) and names the program: the job's fault, not the binary's.
    if compiled.compiler() is None:
        pytest.skip("no C compiler here: executors use the shell supervisor")
    huge = submitted().model_copy(
        update={"working_directory": str(tmp_path), "script": "true\n", "environment": {"BIG": "x" * 200_000}}
    )
    first = await bus.publish(huge)
    await bus.publish(ev.JobPlaced(job_id=first, node=NODE, cores=(0,), memory_mb=100), by_scheduler=True)
    failed = await _outcome(bus, first)
    assert isinstance(failed, ev.JobFailed) and "Argument list too long" in (failed.message or "")
    second = await _submit_and_place(bus, tmp_path, f"tr '\\0' ' ' < /proc/$PPID/cmdline > {tmp_path}/parent\n")
    assert isinstance(await _outcome(bus, second), ev.JobCompleted)
    assert (tmp_path / "parent").read_text().startswith(f"{sv.ARGV0} "), "the shell form took over"
