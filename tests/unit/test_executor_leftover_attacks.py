"""Attacks on the look for what jobs that ended by themselves left running (leftovers.py), from a
review that tried to break it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conductor_executor import supervision as sv
from conductor_executor.leftovers import kill_left_by_ended, sweep_ended

# A daemon as any is made (setsid, fork, the session's leader exits): a session whose id is a pid no
# process has any more, and a member in it. Prints the session's id and the member's pid.
_DAEMON = """
import os, sys, time
os.setsid()
if os.fork() == 0:
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    time.sleep(60)
    os._exit(0)
print(os.getpid(), flush=True)
os._exit(0)
"""


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_a_session_that_reused_an_ended_jobs_session_id_is_not_killed(tmp_path: Path) -> None:
    """Job 7 ended; its ``status`` names its session (its bash's pid, which is then free). Before the
    next look (5 s later; later still while NATS is away at the start: the look only runs once
    connected) that pid is given to another process, which makes a session of its own and exits,
    leaving a member (a daemon: anyone's). The look kills that member: it is in a session of the id
    the job's record names and started after the job's supervisor. Here the reuse is simulated by
    writing the other session's id into the ended job's record."""
    floor = time.time() - 5  # the job's supervisor started 5 s ago
    leader = subprocess.run([sys.executable, "-c", _DAEMON], capture_output=True, text=True, check=True)
    session = int(leader.stdout.split()[0])
    members = [p.pid for p in psutil.process_iter() if _sid(p.pid) == session and _alive(p.pid)]
    assert members, "the bystander daemon should run"
    folder = tmp_path / "jobs" / "7"
    folder.mkdir(parents=True)
    (folder / sv.STATUS).write_text(f"pgid {session}\nexit 0\n")
    try:
        kill_left_by_ended({folder: floor})
        time.sleep(0.2)
        killed = [pid for pid in members if not _alive(pid)]
        assert not killed, f"a process that is no job's was killed: {killed} (session {session})"
    finally:
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


async def test_a_look_that_fails_does_not_forget_the_jobs_it_had(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sweep_ended`` takes the batch out of ``ended`` before the look: a look that raises (a /proc
    read error, EMFILE, a bug for one odd process) drops every job of it for good, and their
    leftovers run on for ever (the same as a look whose 5 rounds end with the job's processes still
    there, see the forking test)."""
    calls: list[set[Path]] = []

    def failing_once(batch: dict[Path, float]) -> None:
        calls.append(set(batch))
        if len(calls) == 1:
            raise OSError(24, "Too many open files")

    monkeypatch.setattr("conductor_executor.leftovers.kill_left_by_ended", failing_once)
    folder = tmp_path / "7"
    ended = {folder: time.time()}
    stop = asyncio.Event()
    task = asyncio.create_task(sweep_ended(ended, 0.02, stop))
    await asyncio.sleep(0.3)
    stop.set()
    await task
    assert len(calls) >= 2 and folder in calls[1], f"the job was looked at once and forgotten: {calls}"
