"""Recovery finds a job its executor spawned but died before recording, and only that job."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conductor_executor.leftovers import kill_marked, kill_unrecorded
from conductor_executor.supervision import MARK


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "jobs" / "5" / "script.sh"
    path.parent.mkdir(parents=True)
    # A builtin that waits on stdin: no child of its own to outlive the tests, and it ends when the
    # test closes that pipe.
    path.write_text("read -r line\n")
    return path


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait()
        if process.stdin is not None:
            process.stdin.close()


def _job(script: Path, spawned: list[subprocess.Popen[bytes]], *, own_session: bool = True) -> int:
    process = subprocess.Popen(["/bin/bash", str(script)], stdin=subprocess.PIPE, start_new_session=own_session)
    spawned.append(process)
    # Until bash has exec'd, the child's command line is still Python's.
    while _cmdline(process.pid) != ["/bin/bash", str(script)]:
        time.sleep(0.01)
    return process.pid


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _spared(process: subprocess.Popen[bytes]) -> bool:
    """Not SIGKILLed: ended by our SIGTERM instead (a SIGKILL already sent would have won)."""
    process.terminate()
    return process.wait() == -signal.SIGTERM


def test_the_job_of_that_script_is_killed_with_its_group(script: Path, spawned: list[subprocess.Popen[bytes]]) -> None:
    _job(script, spawned)
    kill_unrecorded({str(script): (5, script.stat().st_mtime)})
    assert spawned[0].wait() == -signal.SIGKILL


def test_a_process_older_than_the_script_is_not_that_job(script: Path, spawned: list[subprocess.Popen[bytes]]) -> None:
    _job(script, spawned)
    written = time.time() + 3600  # the script was written after that process started: a reused path
    kill_unrecorded({str(script): (5, written)})
    assert _spared(spawned[0])


def test_a_process_that_leads_no_group_is_not_a_job(script: Path, spawned: list[subprocess.Popen[bytes]]) -> None:
    pid = _job(script, spawned, own_session=False)
    assert os.getpgid(pid) != pid
    kill_unrecorded({str(script): (5, script.stat().st_mtime)})
    assert _spared(spawned[0])


def test_another_script_is_left_alone(script: Path, spawned: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    _job(script, spawned)
    kill_unrecorded({str(tmp_path / "jobs" / "6" / "script.sh"): (6, script.stat().st_mtime)})
    assert _spared(spawned[0])


# -- by the mark in their environment (``leftovers.kill_marked``) ------------------------------------


def _marked(spawned: list[subprocess.Popen[bytes]], mark: str | None, command: str, *, own_session: bool = True) -> int:
    env = {k: v for k, v in os.environ.items() if k != MARK}
    if mark is not None:
        env[MARK] = mark
    process = subprocess.Popen(["/bin/bash", "-c", command], env=env, start_new_session=own_session)
    spawned.append(process)
    # Until bash has exec'd, the child's environment is still Python's.
    while _cmdline(process.pid)[:1] not in (["/bin/bash"], ["sleep"]):
        time.sleep(0.01)
    return process.pid


def _children(pid: int, n: int) -> list[int]:
    """The ``n`` sleeps ``pid`` starts, once they run (before its exec, a child is its parent's copy)."""
    deadline = time.monotonic() + 5
    while True:
        found = [child.pid for child in psutil.Process(pid).children(recursive=True)]
        if (len(found) >= n and all(_cmdline(child)[:1] == ["sleep"] for child in found)) or (
            time.monotonic() > deadline
        ):
            return found
        time.sleep(0.01)


def test_a_marked_process_and_its_session_are_killed_and_only_they(
    spawned: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    mark = str(tmp_path / "jobs" / "5")
    # The job's bash leads its session; a child that dropped the mark stays in it.
    job = _marked(spawned, mark, f"env -u {MARK} sleep 60 & wait")
    [child] = _children(job, 1)
    longer = _marked(spawned, mark + "0", "sleep 60")  # job 50 is not job 5
    unmarked = _marked(spawned, None, "sleep 60")
    killed = kill_marked({mark: time.time() - 5})
    assert sorted(killed[mark]) == sorted([job, child]) and list(killed) == [mark]
    assert spawned[0].wait() == -signal.SIGKILL
    assert _spared(spawned[1]) and _spared(spawned[2])
    assert unmarked not in killed[mark] and longer not in killed[mark]


def test_a_marked_process_older_than_the_job_is_spared(spawned: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    mark = str(tmp_path / "jobs" / "5")
    _marked(spawned, mark, "sleep 60")
    assert kill_marked({mark: time.time() + 3600}) == {}
    assert _spared(spawned[0])


def test_the_session_of_another_leader_is_spared(spawned: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """A marked process in a session whose leader runs without the mark: the leader is not the job's,
    nor are its other members (only the marked process is killed)."""
    mark = str(tmp_path / "jobs" / "5")
    leader = _marked(spawned, None, f"{MARK}={mark} sleep 60 & sleep 60 & wait")
    members = _children(leader, 2)
    try:
        killed = kill_marked({mark: time.time() - 5})
        assert len(killed[mark]) == 1 and killed[mark][0] in members and leader not in killed[mark]
        assert _spared(spawned[0])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader, signal.SIGKILL)
