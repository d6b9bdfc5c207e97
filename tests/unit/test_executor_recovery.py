"""Recovery finds a job its executor spawned but died before recording, and only that job."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conductor_executor.leftovers import kill_unrecorded


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
