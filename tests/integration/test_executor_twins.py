"""A node has one executor: a second started with its name is refused (``twins.py``). Two shared the
node's placements: a placement one of them was slow to acknowledge ran on both."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor import twins
from conductor_executor.service import run
from conductor_platform import folder_lock
from conductor_platform.bus import Bus
from tests.integration.helpers import eventually, read_log
from tests.integration.test_executor import NODE, _outcome, _submit_and_place, executor_settings, running
from tests.integration.test_executor_nodes import _alive


async def _beats(bus: Bus) -> bytes | None:
    kv = await bus.heartbeats()
    try:
        return (await kv.get(subjects.heartbeat_key(NODE))).value
    except Exception:
        return None


async def test_a_second_executor_of_a_node_elsewhere_is_refused_and_the_first_runs_on(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    first = executor_settings(nats_url, tmp_path / "a", heartbeat_s=0.5)
    async with running(bus, first):
        await eventually(lambda: _beats(bus), what="the first executor's heartbeat")
        second = executor_settings(nats_url, tmp_path / "b", heartbeat_s=0.5)  # another machine's folder
        with pytest.raises(twins.TwinExecutor, match="another executor of this node is running"):
            await asyncio.wait_for(run(second, asyncio.Event()), 60)
        job_id = await _submit_and_place(bus, tmp_path / "work", "echo once >> runs\n")
        outcome = await _outcome(bus, job_id)
        assert isinstance(outcome, ev.JobCompleted)
        assert (tmp_path / "work" / "runs").read_text() == "once\n"


async def test_of_two_executors_of_a_node_started_together_one_is_refused(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    # Both found no live twin (no heartbeat yet) and both ran: only one may write over what they saw.
    stop = asyncio.Event()
    runs = [
        asyncio.create_task(run(executor_settings(nats_url, tmp_path / name, heartbeat_s=0.5), stop))
        for name in ("a", "b")
    ]
    try:
        done, _ = await asyncio.wait(runs, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        [refused] = done
        with pytest.raises(twins.TwinExecutor, match="a node has one executor"):
            refused.result()
        await asyncio.sleep(2)  # the other runs on
        assert not [task for task in runs if task is not refused and task.done()]
    finally:
        stop.set()
        await asyncio.gather(*runs, return_exceptions=True)


async def test_an_executor_restarted_on_its_own_folder_is_no_twin(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    settings = executor_settings(nats_url, tmp_path, heartbeat_s=0.5)
    async with running(bus, settings):
        beat = json.loads(await eventually(lambda: _beats(bus), what="a heartbeat"))
        # What the scheduler waits for before it declares the node lost, at least (its liveness.py).
        assert beat["lost_after_s"] == settings.node_lost_after_s and beat["instance"]
    # Its last beat is its own instance's: the restart starts (a twin's check would refuse it).
    async with running(bus, settings):
        job_id = await _submit_and_place(bus, tmp_path / "work", "true\n")
        assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)


async def _registrations(bus: Bus) -> list[ev.NodeRegistered]:
    return [e for _, _, e in await read_log(bus) if isinstance(e, ev.NodeRegistered)]


async def test_an_executor_replacing_another_of_its_node_starts_none_of_that_ones_placements(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    # The first executor is gone and the node's next one has another state folder (a pod given a new
    # emptyDir): a placement the first never took is one of its runs, which the scheduler ends (a
    # NodeLost once the first is surely gone), so it must not run here too.
    first = executor_settings(nats_url, tmp_path / "a", heartbeat_s=0.5)
    async with running(bus, first):
        await eventually(lambda: _beats(bus), what="the first executor's heartbeat")
    left = await _submit_and_place(bus, tmp_path / "work", "echo left >> runs\n")
    second = executor_settings(nats_url, tmp_path / "b", heartbeat_s=0.5)
    stop = asyncio.Event()
    replacing = asyncio.create_task(run(second, stop))
    try:

        async def by_second() -> list[ev.NodeRegistered]:
            return (await _registrations(bus))[1:]

        [again] = await eventually(by_second, what="the second executor's registration")
        [before] = (await _registrations(bus))[:1]
        assert again.instance and before.instance and again.instance != before.instance
        job_id = await _submit_and_place(bus, tmp_path / "work", "echo placed-after >> runs\n")
        assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)
    finally:
        stop.set()
        await replacing
    # The first's placement came first in the node's consumer: not run, and, as the first never had
    # it, reported as never started (the scheduler runs it again).
    assert (tmp_path / "work" / "runs").read_text() == "placed-after\n"
    about_left = [e for _, _, e in await read_log(bus) if getattr(e, "job_id", None) == left]
    assert [e.type for e in about_left] == ["JobPlaced", "JobFailed"]  # a submission's id is its sequence
    assert isinstance(about_left[1], ev.JobFailed) and about_left[1].never_started


async def test_an_executor_frozen_while_another_took_its_node_over_gives_the_node_up_when_thawed(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    # It ran beside the one that replaced it: both took the node's placements and ran its jobs.
    env = os.environ | {
        "NATS_URL": nats_url,
        "CONDUCTOR_NODE": NODE,
        "CONDUCTOR_STATE_DIR": str(tmp_path / "a"),
        "CONDUCTOR_HEARTBEAT_S": "0.5",
        "CONDUCTOR_KILL_GRACE_S": "1",
    }
    first = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conductor_executor", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        work = tmp_path / "work"
        await eventually(lambda: _registrations(bus), what="the first executor's registration")
        job_id = await _submit_and_place(bus, work, "echo $$ > pid\nsleep 120\n")
        pid = int(await eventually(lambda: _read(work / "pid"), what="the job running on the first executor"))
        os.kill(first.pid, signal.SIGSTOP)
        stop = asyncio.Event()
        second = asyncio.create_task(run(executor_settings(nats_url, tmp_path / "b", heartbeat_s=0.5), stop))
        try:

            async def by_second() -> list[ev.NodeRegistered]:
                registered = await _registrations(bus)
                return [r for r in registered if r.instance != registered[0].instance]

            await eventually(by_second, what="the second executor's registration")
            os.kill(first.pid, signal.SIGCONT)
            stderr = (await asyncio.wait_for(first.communicate(), 60))[1].decode()
            assert first.returncode == os.EX_TEMPFAIL, stderr
            assert "another executor of this node took it over" in stderr
            outcome = await _outcome(bus, job_id)
            assert isinstance(outcome, ev.JobFailed) and outcome.node_fail and "took the node over" in outcome.message

            async def gone() -> bool:
                return not _alive(pid)  # the job's bash leads its process group: the group is gone

            await eventually(gone, what="the job's processes gone")
            assert not second.done()  # the second runs on
            later = await _submit_and_place(bus, work, "true\n")
            assert isinstance(await _outcome(bus, later), ev.JobCompleted)
        finally:
            stop.set()
            await second
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(first.pid, signal.SIGCONT)
        if first.returncode is None:
            first.kill()
            await first.wait()


async def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


async def test_a_second_executor_on_the_same_state_folder_is_refused(tmp_path: Path) -> None:
    held = await twins.lock_node_folder(tmp_path)
    try:
        with pytest.raises(twins.TwinExecutor, match="uses the state folder"):
            await twins.lock_node_folder(tmp_path, wait_s=0.2)
    finally:
        os.close(held)
    os.close(await twins.lock_node_folder(tmp_path))  # released with its holder


async def test_a_lock_let_go_within_the_wait_is_taken(tmp_path: Path) -> None:
    # What a killed executor's last job start holds until it has executed: a process that keeps the
    # lock a moment after the executor is gone (CI refused the next executor once).
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys, time; from pathlib import Path; from conductor_executor import twins;"
        " from conductor_platform.folder_lock import lock_folder;"
        " fd = lock_folder(Path(sys.argv[1]), twins.LOCK); print('held', flush=True); time.sleep(1.0)",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and await holder.stdout.readline() == b"held\n"
        fd = await twins.lock_node_folder(tmp_path, wait_s=30)  # refused at once before
        os.close(fd)
        assert folder_lock.holder(tmp_path, twins.LOCK) == str(os.getpid())
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


def test_a_refused_executor_exits_for_a_retry_not_as_a_bad_setting(tmp_path: Path) -> None:
    # It exited 78, which stopped all of `conductor up`, though the other executor may be on its way out.
    state = tmp_path / "state"
    held = asyncio.run(twins.lock_node_folder(state / NODE))
    try:
        env = os.environ | {"CONDUCTOR_STATE_DIR": str(state), "CONDUCTOR_NODE": NODE, "NATS_URL": "nats://127.0.0.1:1"}
        done = subprocess.run(
            [sys.executable, "-m", "conductor_executor"], env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        os.close(held)
    assert done.returncode == os.EX_TEMPFAIL, done.stderr
    assert f"node {NODE}: another executor (pid {os.getpid()}) uses the state folder" in done.stderr
