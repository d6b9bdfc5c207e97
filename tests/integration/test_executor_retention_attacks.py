"""Attacks on the executor's job folder retention and on its look for what ended jobs left running,
against a real nats-server (from a review that tried to break them): a job's odd records, kills amid
fast sweeps, NATS away longer than the retention, a requeued job's runs, a job that ended while no
executor ran."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor import supervision as sv
from conductor_executor.service import run
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus, connect
from conductor_platform.localservers import free_port, start_nats
from tests.integration.executor_jobs import (
    counted_job,
    events_by_job,
    kill_all_in,
    place_as_one_batch,
    processes_in,
    starts_by_job,
)
from tests.integration.helpers import eventually
from tests.integration.test_executor import NODE, _has, _outcome, executor_settings, running
from tests.integration.test_executor_restart import ExecutorProcess
from tests.unit.scheduling import submitted


async def _placed(bus: Bus, work: Path, script: str, core: int) -> int:
    job = submitted().model_copy(update={"working_directory": str(work), "script": script, "name": "rv"})
    job_id = await bus.publish(job)
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(core,), memory_mb=100), by_scheduler=True)
    return job_id


def _unblock_fifo(path: Path) -> None:
    """A reader blocked on ``path`` gets an end of file (a writer that opens and closes)."""
    for _ in range(50):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: no reader (any more); ENOENT: gone
            return
        time.sleep(0.01)


async def test_a_job_that_leaves_a_fifo_as_done_stops_no_later_removal(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    """Job A ends after ``mkfifo $CONDUCTOR_JOB_DIR/done`` (its folder is its own to write in). Its end
    is marked in process.json, so the FIFO stays; the sweep's ``read_done`` opened it and blocked for
    ever. Job B, ending after, must still have its folder removed."""
    work = tmp_path / "work"
    work.mkdir()
    settings = executor_settings(nats_url, tmp_path, job_retention_s=0, job_sweep_s=0.1)
    fifo: Path | None = None
    try:
        async with running(bus, settings):
            first = await _placed(bus, work, 'mkfifo "$CONDUCTOR_JOB_DIR/done"\n', 0)
            fifo = settings.jobs_dir / str(first) / sv.DONE
            assert isinstance(await _outcome(bus, first), ev.JobCompleted)
            await asyncio.sleep(1)  # a few sweeps: one of them is blocked on the FIFO now
            second = await _placed(bus, work, "true\n", 1)
            assert isinstance(await _outcome(bus, second), ev.JobCompleted)

            async def second_gone() -> bool:
                return not (settings.jobs_dir / str(second)).exists()

            try:
                await eventually(second_gone, timeout=8, what="job B's folder removed")
            finally:
                _unblock_fifo(fifo)
    finally:
        if fifo is not None:
            _unblock_fifo(fifo)
        kill_all_in(work)


# -- kill -9 of the executor in the middle of fast sweeps ------------------------------------------


def _fast_sweeping_executor(settings: ExecutorSettings, cpus: int) -> ExecutorProcess:
    """``python -m conductor_executor`` with retention 0 and sweeps every 50 ms, to be SIGKILLed."""
    fast = {"CONDUCTOR_JOB_RETENTION_S": "0", "CONDUCTOR_JOB_SWEEP_S": "0.05", "CONDUCTOR_LEFTOVER_SCAN_S": "0.1"}
    return ExecutorProcess(settings, cpus, "8G", fast)


CPUS = 16


async def _counted(bus: Bus, runs: Path, work: Path, n: int, first_core: int) -> list[int]:
    ids = []
    for _ in range(n):
        ids.append(await bus.publish(counted_job(runs, work, "sleep 0.2\n")))
    for i, job_id in enumerate(ids):
        placed = ev.JobPlaced(job_id=job_id, node=NODE, cores=((first_core + i) % CPUS,), memory_mb=10)
        await bus.publish(placed, by_scheduler=True)
    return ids


@pytest.mark.parametrize("seed", [1])
async def test_executor_killed_again_and_again_amid_fast_sweeps_runs_nothing_twice(
    bus: Bus, nats_url: str, tmp_path: Path, seed: int
) -> None:
    """Three executors in a row, each SIGKILLed at a random moment while 8 short jobs it was placed
    start, end and have their folders swept (retention 0); then one that runs to the end. Every job
    runs once and has one outcome."""
    rng = random.Random(seed)
    work, runs = tmp_path / "work", tmp_path / "runs"
    work.mkdir()
    runs.mkdir()
    settings = executor_settings(
        nats_url, tmp_path, cpus=CPUS, memory="8G", job_retention_s=0, job_sweep_s=0.05, leftover_scan_s=0.1
    )
    ids: list[int] = []
    try:
        for cycle in range(3):
            executor = _fast_sweeping_executor(settings, CPUS)
            try:
                if cycle == 0:
                    await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
                else:
                    await asyncio.sleep(rng.uniform(0.3, 1.0))
                ids += await _counted(bus, runs, work, 8, 8 * (cycle % 2))
                await asyncio.sleep(rng.uniform(0.2, 1.5))
            finally:
                executor.kill()
        async with running(bus, settings):

            async def all_ended() -> bool:
                found = await events_by_job(bus)
                return all(job_id in found for job_id in ids)

            await eventually(all_ended, timeout=60, what="every job's outcome")
            await asyncio.sleep(6)  # past the ack wait: a placement still unacked comes again now
            left = sorted(path.name for path in settings.jobs_dir.iterdir())
            print(f"folders left: {left} of {len(ids)} jobs")
            assert len(left) < len(ids), "no folder was swept: the test proves nothing"
        found = await events_by_job(bus)
        started = await starts_by_job(bus)
        counts = {job_id: _runs(runs, job_id) for job_id in ids}
        twice = {job_id: n for job_id, n in counts.items() if n > 1}
        assert not twice, f"jobs that ran more than once: {twice}"
        assert all(len(found[job_id]) == 1 for job_id in ids), {j: found[j] for j in ids if len(found[j]) != 1}
        assert all(len(started.get(job_id, [])) <= 1 for job_id in ids)
        for job_id in ids:
            [outcome] = found[job_id]
            if counts[job_id] == 0:  # never ran: it must not say it did
                assert not isinstance(outcome, ev.JobCompleted), (job_id, outcome)
    finally:
        kill_all_in(work)


def _runs(runs: Path, job_id: int) -> int:
    path = runs / f"runs-{job_id}"
    return len(path.read_text().splitlines()) if path.exists() else 0


# -- NATS away, and back, during fast sweeps ------------------------------------------------------


@pytest.mark.parametrize("hard", [True])
async def test_nats_away_longer_than_the_retention_keeps_owed_folders_and_sweeps_resume(
    tmp_path: Path, hard: bool
) -> None:
    """Retention 0, sweeps every 100 ms. A gated job with output, and counted short jobs, are placed;
    NATS goes away (SIGINT, or SIGKILL: ``hard``) while they end; 3 s later (30 sweeps) the folders
    whose outcomes are owed must all be there; NATS back: every outcome once, the gated job's output
    in the store, no job run twice, and the folders removed after all."""
    folder, port = tmp_path / "nats", free_port()
    server = start_nats(folder, port)
    work, runs = tmp_path / "work", tmp_path / "runs"
    work.mkdir()
    runs.mkdir()
    settings = executor_settings(
        server.url, tmp_path, cpus=CPUS, memory="8G", job_retention_s=0, job_sweep_s=0.1, leftover_scan_s=0.1
    )
    try:
        async with running_on(server.url, settings):
            bus = await connect(server.url, name="tests")
            try:
                gated = submitted().model_copy(
                    update={
                        "working_directory": str(work),
                        "script": f"until [ -e {work}/go ]; do sleep 0.05; done; echo out",
                        "name": "gated",
                    }
                )
                gated_id = await bus.publish(gated)
                placed = ev.JobPlaced(job_id=gated_id, node=NODE, cores=(15,), memory_mb=10)
                await bus.publish(placed, by_scheduler=True)
                await eventually(lambda: _has(bus, ev.JobStarted, gated_id), what="gated job started")
                ids = await _counted(bus, runs, work, 8, 0)
                await asyncio.sleep(0.3)  # some started, some not yet
            finally:
                await bus.close()
            if hard:
                server.process.kill()
                server.process.wait()
            else:
                server.stop()
            (work / "go").touch()
            await asyncio.sleep(3)
            assert (settings.jobs_dir / str(gated_id)).exists(), "folder of a job whose outcome is owed removed"
            owed = {(name.job_id, name.run) for name in _outbox_names(settings)}
            for job_id in ids:
                if (job_id, 0) in owed:
                    assert (settings.jobs_dir / str(job_id)).exists(), f"job {job_id}'s folder removed while owed"
            server = start_nats(folder, port)
            bus = await connect(server.url, name="tests")
            try:

                async def all_ended() -> bool:
                    found = await events_by_job(bus)
                    return all(job_id in found for job_id in [*ids, gated_id])

                await eventually(all_ended, timeout=60, what="every job's outcome")
                await asyncio.sleep(6)  # past the ack wait

                async def swept() -> bool:
                    return not any((settings.jobs_dir / str(j)).exists() for j in [*ids, gated_id])

                await eventually(swept, timeout=10, what="the folders removed once NATS came back")
                store = await bus.outputs()
                assert (await store.get(subjects.output_object(gated_id, "stdout"))).data == b"out\n"
                found = await events_by_job(bus)
            finally:
                await bus.close()
        assert all(len(found[job_id]) == 1 for job_id in [*ids, gated_id])
        twice = {job_id: n for job_id in ids if (n := _runs(runs, job_id)) > 1}
        assert not twice, f"jobs that ran more than once: {twice}"
    finally:
        server.stop()
        kill_all_in(work)


def _outbox_names(settings: ExecutorSettings) -> list[Any]:
    from conductor_executor.outbox import parse_name

    return [name for path in settings.outbox_dir.glob("*.json") if (name := parse_name(path.name)) is not None]


@contextlib.asynccontextmanager
async def running_on(url: str, settings: ExecutorSettings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    bus = await connect(url, name="tests-wait")
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
    finally:
        await bus.close()
    try:
        yield
    finally:
        stop.set()
        await task


async def test_a_running_job_that_writes_done_in_its_folder_is_still_taken_over_and_kept(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    """A job writes ``$CONDUCTOR_JOB_DIR/done`` (its folder is its own to write in; ``done`` is a
    plausible name for a job's own flag file) and runs on. The executor restarts: ``take_stock``
    took the file for the executor's done marker and skipped the job (nobody held its cores or would
    report its end), and the sweep then removed the folder of a job still running. Its record, which
    says whether it is done, now wins."""
    work = tmp_path / "work"
    work.mkdir()
    leave = executor_settings(nats_url, tmp_path, stop_jobs_on_exit=False)
    sweeping = executor_settings(nats_url, tmp_path, job_retention_s=0, job_sweep_s=0.1)
    try:
        async with running(bus, leave):
            gated = 'echo mine > "$CONDUCTOR_JOB_DIR/done"\nuntil [ -e go ]; do sleep 0.05; done\n'
            job_id = await _placed(bus, work, gated, 0)
            await eventually(lambda: _has(bus, ev.JobStarted, job_id), what="started")
            await eventually(
                lambda: _value((leave.jobs_dir / str(job_id) / sv.DONE).exists()), what="the job wrote done"
            )
        async with running(bus, sweeping):
            await asyncio.sleep(1.5)  # 15 sweeps, the job still running
            assert processes_in(work), "the job should still run"
            assert (sweeping.jobs_dir / str(job_id)).exists(), "the folder of a job still running was removed"
            (work / "go").touch()
            outcome = await _outcome(bus, job_id)  # its end, reported
            assert isinstance(outcome, ev.JobCompleted), outcome
    finally:
        kill_all_in(work)


async def _value(value: object) -> object:
    return value


@pytest.mark.parametrize("handled", [6])
async def test_killed_before_acking_a_batch_with_fast_sweeps_runs_nothing_twice(
    bus: Bus, nats_url: str, tmp_path: Path, handled: int
) -> None:
    """An executor (retention 0, sweeps every 50 ms) fetches 8 placements as one batch, is SIGKILLed
    once it made ``handled`` folders (their placements unacked); jobs end meanwhile; the next executor
    (retention 0 too) gets the placements again after the ack wait: none runs a second time."""
    work, runs = tmp_path / "work", tmp_path / "runs"
    work.mkdir()
    runs.mkdir()
    settings = executor_settings(
        nats_url, tmp_path, cpus=CPUS, memory="8G", job_retention_s=0, job_sweep_s=0.05, leftover_scan_s=0.1
    )
    try:
        executor = _fast_sweeping_executor(settings, CPUS)
        try:
            await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
            ids = [await bus.publish(counted_job(runs, work)) for _ in range(8)]
            await place_as_one_batch(bus, executor, settings, ids, handled=handled)
        finally:
            executor.kill()
        await asyncio.sleep(1)  # what started ends while no executor runs
        async with running(bus, settings):

            async def all_ended() -> bool:
                found = await events_by_job(bus)
                return all(job_id in found for job_id in ids)

            await eventually(all_ended, timeout=60, what="every job's outcome")
            await asyncio.sleep(7)  # past the ack wait, and sweeps
        found = await events_by_job(bus)
        twice = {job_id: n for job_id in ids if (n := _runs(runs, job_id)) > 1}
        assert not twice, f"jobs that ran more than once: {twice}"
        assert all(len(found[job_id]) == 1 for job_id in ids), {j: found[j] for j in ids}
    finally:
        kill_all_in(work)


async def test_a_requeued_jobs_two_runs_are_swept_and_nothing_is_reported_again(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    """Run 0 killed by a NodeLost, run 1 placed on the same node and completed, retention 0: both
    folders go, and a restarted executor reports nothing more for either run."""
    from tests.integration.test_executor_nodes import _place as place_run
    from tests.integration.test_executor_nodes import _registered_after, _started, _submit

    work = tmp_path / "work"
    work.mkdir()
    settings = executor_settings(nats_url, tmp_path, job_retention_s=0, job_sweep_s=0.05)
    async with running(bus, settings):
        job_id = await _submit(bus, work, requeue=True)
        await place_run(bus, job_id, run=0)
        await eventually(lambda: _started(bus, job_id, 0), what="run 0 started")
        lost = await bus.publish(ev.NodeLost(node=NODE), by_scheduler=True)
        await eventually(lambda: _registered_after(bus, lost), what="the node registered again")
        await bus.publish(ev.JobRequeued(job_id=job_id, node=NODE, run=0), by_scheduler=True)
        (work / "go").touch()
        await place_run(bus, job_id, run=1)
        outcome = await _outcome(bus, job_id)
        assert isinstance(outcome, ev.JobCompleted) and outcome.run == 1

        async def both_gone() -> bool:
            runs = (sv.folder_name(job_id, 0), sv.folder_name(job_id, 1))
            return not any((settings.jobs_dir / name).exists() for name in runs)

        await eventually(both_gone, timeout=10, what="both runs' folders removed")
    async with running(bus, settings):
        await asyncio.sleep(2)
    outcomes = (await events_by_job(bus))[job_id]
    started = (await starts_by_job(bus))[job_id]
    assert len(outcomes) == 1, outcomes
    assert [s.run for s in started] == [0, 1], started


async def test_what_a_job_that_ended_while_no_executor_ran_left_is_killed(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    """A job leaves a ``setsid`` daemon (marked: what the look is for) and ends by itself while its
    executor is dead (SIGKILL: a crash, an upgrade, or simply within the 5 s before the look). The
    next executor reports it from its record (``take_stock`` -> Ended without reasons), but looks for
    leftovers only of lost, dropped, unrecorded or killed jobs, and the job is never put in
    ``ended``: its daemon runs on for ever."""
    work = tmp_path / "work"
    work.mkdir()
    settings = executor_settings(nats_url, tmp_path, leftover_scan_s=0.1)
    script = "setsid sleep 316 &\nuntil [ -e go ]; do sleep 0.05; done\n"
    try:
        executor = _fast_sweeping_executor(settings, 2)
        try:
            await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
            job_id = await _placed(bus, work, script, 0)
            await eventually(lambda: _has(bus, ev.JobStarted, job_id), what="started")
            await eventually(lambda: _value(len(processes_in(work)) >= 2), what="the daemon started")
        finally:
            executor.kill()
        (work / "go").touch()  # the job ends while no executor runs
        await asyncio.sleep(1)
        async with running(bus, settings):
            assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)
            await asyncio.sleep(1)  # ten looks

            async def left_alone() -> bool:
                return not processes_in(work)

            await eventually(left_alone, timeout=3, what="the daemon of the job that ended meanwhile killed")
    finally:
        kill_all_in(work)


async def test_an_executor_whose_job_left_a_fifo_as_done_still_stops_on_sigterm(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    """``asyncio.run`` waits for the default executor's threads at its end: a sweep's thread blocked on
    the job's FIFO kept SIGTERM from ending ``python -m conductor_executor``."""
    work = tmp_path / "work"
    work.mkdir()
    settings = executor_settings(nats_url, tmp_path)
    executor = _fast_sweeping_executor(settings, 2)
    fifo: Path | None = None
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        job_id = await _placed(bus, work, 'mkfifo "$CONDUCTOR_JOB_DIR/done"\n', 0)
        fifo = settings.jobs_dir / str(job_id) / sv.DONE
        assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)
        await asyncio.sleep(1)  # 20 sweeps: one is blocked on the FIFO
        executor.process.terminate()
        try:
            await asyncio.to_thread(executor.process.wait, 15)
            ended = True
        except subprocess.TimeoutExpired:
            ended = False
        assert ended, "the executor did not end within 15 s of SIGTERM"
    finally:
        if fifo is not None:
            _unblock_fifo(fifo)
        executor.kill()
        kill_all_in(work)
