"""An executor declared lost (NodeLost) kills what the scheduler ended, reports nothing for it, and
registers again; a job requeued onto the same node runs again as its next run, reported as such."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor import placements
from conductor_executor import supervision as sv
from conductor_executor.placements import ensure_consumer
from conductor_executor.service import Executor, run
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus
from tests.integration.helpers import eventually, read_log, starts
from tests.integration.test_executor import NODE, _has, executor_settings, running
from tests.unit.scheduling import submitted

# Runs until the test lets it end (a file in its working directory): the first run is the one the
# node loss kills, the second the one that completes.
_SCRIPT = "until [ -e go ]; do sleep 0.1; done\n"


async def _submit(bus: Bus, work: Path, *, requeue: bool = False) -> int:
    job = submitted().model_copy(
        update={"working_directory": str(work), "script": _SCRIPT, "time_limit_s": 120, "requeue": requeue}
    )
    return await bus.publish(job)


async def _place(bus: Bus, job_id: int, run: int = 0) -> int:
    placed = ev.JobPlaced(job_id=job_id, node=NODE, cores=(1,), memory_mb=100, run=run)
    return await bus.publish(placed, by_scheduler=True)


async def _of(bus: Bus, job_id: int) -> list[tuple[int, ev.Event]]:
    return [(seq, e) for seq, _, e in await read_log(bus) if getattr(e, "job_id", None) == job_id]


async def _started(bus: Bus, job_id: int, run: int = 0) -> bool:
    return any(s.run == run for s in starts(e for _, e in await _of(bus, job_id)))


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def _group(settings: ExecutorSettings, job_id: int, run: int = 0) -> int:
    async def probe() -> int | None:
        return sv.read_pgid(settings.jobs_dir / sv.folder_name(job_id, run))

    return await eventually(probe, what="the job's process group recorded")


async def _registered_after(bus: Bus, seq: int) -> bool:
    return any(isinstance(e, ev.NodeRegistered) and s > seq for s, _, e in await read_log(bus))


async def test_a_node_declared_lost_kills_its_jobs_reports_nothing_and_registers_again(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    async with running(bus, executor_settings(nats_url, tmp_path)) as settings:
        job_id = await _submit(bus, work)
        await _place(bus, job_id)
        await eventually(lambda: _started(bus, job_id), what="job started")
        pgid = await _group(settings, job_id)
        assert _alive(pgid)

        lost = await bus.publish(ev.NodeLost(node=NODE, reason="silent"), by_scheduler=True)

        async def gone() -> bool:
            return not _alive(pgid)

        await eventually(gone, what="the job's process group killed")
        await eventually(lambda: _registered_after(bus, lost), what="the node registered again")
        await asyncio.sleep(0.5)  # an outcome would be right behind
        kinds = [e.type for _, e in await _of(bus, job_id)]
        assert kinds == ["JobPlaced", "JobStarted"], kinds
        # Marked so that a restart neither takes it over nor reports it.
        assert sv.read_done(settings.jobs_dir / str(job_id)) == sv.LOST
        assert sv.LOST in sv.read_kill(settings.jobs_dir / str(job_id))

        # The node takes work again.
        other = await _submit(bus, work)
        (work / "go").touch()
        await _place(bus, other)
        await eventually(lambda: _started(bus, other), what="a job placed after the loss started")
        outcomes = [e for _, e in await _of(bus, job_id) if isinstance(e, ev.TERMINAL_JOB_EVENTS)]
        assert not outcomes


async def test_a_requeued_job_runs_again_on_the_same_node_as_its_next_run(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    async with running(bus, executor_settings(nats_url, tmp_path)) as settings:
        job_id = await _submit(bus, work, requeue=True)
        await _place(bus, job_id, run=0)
        await eventually(lambda: _started(bus, job_id, 0), what="run 0 started")
        first = await _group(settings, job_id, 0)

        lost = await bus.publish(ev.NodeLost(node=NODE), by_scheduler=True)
        await eventually(lambda: _registered_after(bus, lost), what="the node registered again")

        async def gone() -> bool:
            # Polled: its last process may be a zombie for a moment after its supervisor exited.
            return not _alive(first)

        await eventually(gone, what="run 0 killed")
        await bus.publish(ev.JobRequeued(job_id=job_id, node=NODE, run=0), by_scheduler=True)
        (work / "go").touch()
        await _place(bus, job_id, run=1)

        async def ended() -> list[ev.Event]:
            return [e for _, e in await _of(bus, job_id) if isinstance(e, ev.TERMINAL_JOB_EVENTS)]

        [outcome] = await eventually(ended, what="run 1's outcome")
        assert isinstance(outcome, ev.JobCompleted) and outcome.run == 1 and outcome.node == NODE
        started = starts(e for _, e in await _of(bus, job_id))
        assert [s.run for s in started] == [0, 1]
        assert sv.read_done(settings.jobs_dir / f"{job_id}.1") == "JobCompleted"
        assert sv.read_done(settings.jobs_dir / str(job_id)) == sv.LOST


async def _lost_under_a_stubborn_run(bus: Bus, work: Path) -> int:
    """A run that dies slowly (SIGTERM ignored: it waits out the kill's grace for SIGKILL) on core
    1, then the node's NodeLost: the id of a job submitted after it, to be placed on that core."""
    stubborn = await bus.publish(
        submitted().model_copy(update={"working_directory": str(work), "script": "trap '' TERM\n" + _SCRIPT})
    )
    await _place(bus, stubborn)
    await eventually(lambda: _started(bus, stubborn), what="job started")
    await bus.publish(ev.NodeLost(node=NODE), by_scheduler=True)
    return await _submit(bus, work)


async def test_a_placement_on_the_cores_of_runs_the_loss_is_killing_waits_for_them(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    """The scheduler frees a lost node's cores at the NodeLost, and a placement may come before the
    runs it ended are gone (a restarted executor registers before it reads the NodeLost): it used to
    end FAILED, "placement does not fit this node" (review of 2026-12-02)."""
    work = tmp_path / "work"
    work.mkdir()
    async with running(bus, executor_settings(nats_url, tmp_path, kill_grace_s=2)):
        after = await _lost_under_a_stubborn_run(bus, work)
        await _place(bus, after)  # on core 1, still held by the run being killed
        (work / "go").touch()

        async def outcome() -> ev.Event | None:
            ended = [e for _, e in await _of(bus, after) if isinstance(e, ev.TERMINAL_JOB_EVENTS)]
            return ended[0] if ended else None

        assert isinstance(done := await eventually(outcome, 30, "its outcome"), ev.JobCompleted), done


async def test_a_placement_waiting_for_cores_is_left_to_the_next_executor_by_a_stop(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    """Refused at the stop, it ended FAILED without running; marked before its wait, a kill left it
    NODE_FAIL "while the job ran" (review of 2026-12-02)."""
    work = tmp_path / "work"
    work.mkdir()
    settings = executor_settings(nats_url, tmp_path, kill_grace_s=5)
    async with running(bus, settings):
        after = await _lost_under_a_stubborn_run(bus, work)
        await _place(bus, after)
        await asyncio.sleep(1)  # it waits for the stubborn run's cores
    assert not (settings.jobs_dir / str(after)).exists()
    assert not [e for _, e in await _of(bus, after) if isinstance(e, ev.TERMINAL_JOB_EVENTS)]
    (work / "go").touch()
    async with running(bus, settings):

        async def outcome() -> ev.Event | None:
            ended = [e for _, e in await _of(bus, after) if isinstance(e, ev.TERMINAL_JOB_EVENTS)]
            return ended[0] if ended else None

        assert isinstance(done := await eventually(outcome, 60, "its outcome"), ev.JobCompleted), done


async def test_a_stopping_executor_beats_until_its_jobs_are_stopped(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    """It stopped beating at once while it spent the kill's grace on jobs that ignore SIGTERM: its
    node was declared lost meanwhile (review of 2026-12-02)."""
    work = tmp_path / "work"
    work.mkdir()
    settings = executor_settings(nats_url, tmp_path, kill_grace_s=3, heartbeat_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        job_id = await bus.publish(
            submitted().model_copy(update={"working_directory": str(work), "script": "trap '' TERM\n" + _SCRIPT})
        )
        await _place(bus, job_id)
        await eventually(lambda: _started(bus, job_id), what="job started")
        kv = await bus.heartbeats()

        async def beats() -> int:
            try:
                return int((await kv.get(subjects.heartbeat_key(NODE))).revision or 0)
            except NotFoundError:
                return 0

        before = await eventually(beats, what="a heartbeat")
        stop.set()
        await asyncio.sleep(2)  # within the 3 s its job takes to be killed
        assert not task.done()
        assert await beats() > before + 3
    finally:  # stopped whatever happened: its job ends with it (stop_jobs_on_exit)
        stop.set()
        await task


async def test_a_placement_older_than_the_loss_is_not_started(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    """Handled after the NodeLost (a placement nak'd and delivered again later): that run is over."""
    work = tmp_path / "work"
    work.mkdir()
    async with running(bus, executor_settings(nats_url, tmp_path)) as settings:
        job_id = await _submit(bus, work)
        placed = ev.JobPlaced(job_id=job_id, node=NODE, cores=(1,), memory_mb=100)
        lost = await bus.publish(ev.NodeLost(node=NODE), by_scheduler=True)
        await eventually(lambda: _registered_after(bus, lost), what="the node registered again")
    # The same executor's state, as a restarted one finds it: the loss is remembered.
    again = Executor(settings)
    assert again.liveness.lost_seq == lost
    await again.start(placed, seq=lost - 1)
    assert not (settings.jobs_dir / str(job_id)).exists()


async def test_an_older_consumer_is_updated_to_read_node_losses(bus: Bus) -> None:
    durable = f"executor-{NODE}"
    await bus.js.add_consumer(
        bus.stream,
        ConsumerConfig(
            durable_name=durable,
            filter_subjects=[subjects.placements_for(NODE), subjects.CANCEL_ALL],
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    await ensure_consumer(bus, NODE)
    info = await bus.js.consumer_info(bus.stream, durable)
    assert subjects.subject_for(ev.NodeLost(node=NODE)) in (info.config.filter_subjects or [])


def _leaving_jobs(nats_url: str, tmp_path: Path) -> ExecutorSettings:
    """An executor whose stop leaves its jobs running, for the next one to take over."""
    return executor_settings(nats_url, tmp_path, stop_jobs_on_exit=False)


async def test_a_restarted_executor_reports_the_run_it_took_over(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    settings = _leaving_jobs(nats_url, tmp_path)
    async with running(bus, settings):
        job_id = await _submit(bus, work, requeue=True)
        await _place(bus, job_id, run=2)
        await eventually(lambda: _started(bus, job_id, 2), what="run 2 started")
    group = await _group(settings, job_id, 2)
    assert _alive(group)  # left running by the stop
    async with running(bus, executor_settings(nats_url, tmp_path)):
        (work / "go").touch()

        async def ended() -> list[ev.Event]:
            return [e for _, e in await _of(bus, job_id) if isinstance(e, ev.TERMINAL_JOB_EVENTS)]

        [outcome] = await eventually(ended, what="the outcome of the run taken over")
        assert isinstance(outcome, ev.JobCompleted) and outcome.run == 2
        assert [s.run for s in starts(e for _, e in await _of(bus, job_id))] == [2]


@pytest.mark.parametrize("read_elsewhere", [False, True], ids=["delivered-at-restart", "read-by-another-executor"])
async def test_a_loss_read_after_a_restart_kills_the_runs_placed_before_it(
    bus: Bus, nats_url: str, tmp_path: Path, read_elsewhere: bool
) -> None:
    """The executor was down when its node was declared lost: the run it takes over at its next
    start was ended by that NodeLost, which its consumer delivers after the start. Or another executor
    of the node (on another state folder, since gone) read it on the node's shared consumer, and it
    never comes here: the run is ended all the same (it ran on, and its cores went to new placements,
    refused until their jobs ended FAILED)."""
    work = tmp_path / "work"
    work.mkdir()
    settings = _leaving_jobs(nats_url, tmp_path)
    async with running(bus, settings):
        job_id = await _submit(bus, work, requeue=not read_elsewhere)
        await _place(bus, job_id)
        await eventually(lambda: _started(bus, job_id), what="job started")
    group = await _group(settings, job_id)
    lost = await bus.publish(ev.NodeLost(node=NODE), by_scheduler=True)
    if read_elsewhere:
        other = await placements.subscribe(bus, NODE)  # the other executor, on the same durable consumer
        for msg in await other.fetch(10, timeout=10):
            await msg.ack()
        await other.unsubscribe()
    async with running(bus, executor_settings(nats_url, tmp_path)):

        async def gone() -> bool:
            return not _alive(group)

        await eventually(gone, what="the run the loss ended killed")
        await eventually(lambda: _registered_after(bus, lost), what="registered after the loss")
        await asyncio.sleep(0.5)
        assert not [e for _, e in await _of(bus, job_id) if isinstance(e, ev.TERMINAL_JOB_EVENTS)]


async def test_a_run_killed_as_lost_is_not_taken_over_as_a_job(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    """An executor stopped right after marking a run lost (before it was dead): the next one finishes
    the kill and reports nothing for it."""
    work = tmp_path / "work"
    work.mkdir()
    settings = _leaving_jobs(nats_url, tmp_path)
    async with running(bus, settings):
        job_id = await _submit(bus, work)
        await _place(bus, job_id)
        await eventually(lambda: _started(bus, job_id), what="job started")
    group = await _group(settings, job_id)
    folder = settings.jobs_dir / str(job_id)
    sv.write_kill(folder, frozenset({sv.LOST}))
    async with running(bus, executor_settings(nats_url, tmp_path)):

        async def gone() -> bool:
            return not _alive(group)

        await eventually(gone, what="the lost run killed")

        async def marked() -> bool:
            return sv.read_done(folder) is not None

        await eventually(marked, what="the lost run marked done")
        await asyncio.sleep(0.5)
        assert not [e for _, e in await _of(bus, job_id) if isinstance(e, ev.TERMINAL_JOB_EVENTS)]
        assert sv.read_done(folder) == sv.LOST
