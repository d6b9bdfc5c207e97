"""Chaos: the NATS server dies (SIGKILL) and comes back on the same port and store, mid-flight.

Every job must be accounted for and none run twice: a job running through the outage completes and
its outcome reaches the read models, a submit during the outage is refused with 503 (never lost
silently), and the system works again afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conductor_platform.localservers import LocalServer, free_port, start_nats
from tests.e2e.test_system import System, wait_for

pytestmark = pytest.mark.chaos


@pytest.fixture
def nats_folder(tmp_path: Path) -> Path:
    return tmp_path / "nats"


@pytest.fixture
def system_on_own_nats(
    tmp_path: Path, database_url: str, nats_folder: Path
) -> Iterator[tuple[System, LocalServer, int]]:
    nats_port = free_port()
    nats = start_nats(nats_folder, nats_port)
    port = free_port()
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, NATS_URL=nats.url, DATABASE_URL=database_url, CONDUCTOR_KILL_GRACE_S="2")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conductor",
            "up",
            "--var-dir",
            str(tmp_path / "var"),
            "--port",
            str(port),
            "--node",
            "chaos",
            "--cpus",
            "2",
            "--memory",
            "1G",
        ],
        env=env,
    )
    system = System(process, f"http://127.0.0.1:{port}", tmp_path / "var", work)
    try:
        wait_for(lambda: _nodes(system), 120, "system up")
        yield system, nats, nats_port
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(90)
        nats.stop()


def _nodes(system: System) -> bool:
    try:
        return bool(system.http.get("/nodes").json()["nodes"])
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def test_a_nats_restart_loses_nothing(system_on_own_nats: tuple[System, LocalServer, int], nats_folder: Path) -> None:
    system, nats, nats_port = system_on_own_nats
    through = system.submit(f"sleep 4; echo survived >> {system.work}/through.txt")
    wait_for(lambda: system.job(through)["start_time"], what="job started")

    nats.process.kill()
    nats.process.wait()
    refused = system.http.post(
        "/jobs/submit",
        json={"job": {"name": "x", "account": "a", "current_working_directory": str(system.work)}, "script": "true"},
        timeout=30,
    )
    assert refused.status_code == 503, refused.text
    time.sleep(1)
    restarted = start_nats(nats_folder, nats_port)
    try:
        job = system.wait_state(through, "COMPLETED", "FAILED", "NODE_FAIL", timeout=90)
        assert job["state"] == "COMPLETED"
        assert (system.work / "through.txt").read_text() == "survived\n"
        after = system.submit("echo after")
        assert system.wait_state(after, "COMPLETED", "FAILED", timeout=90)["state"] == "COMPLETED"
    finally:
        restarted.stop()
