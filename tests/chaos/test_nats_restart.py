"""Chaos: the NATS server dies (SIGKILL) and comes back on the same port and store, mid-flight.

Every job must be accounted for and none run twice: a job running through the outage completes and
its outcome reaches the read models, a submit during the outage is refused with 503 (never lost
silently), and the system works again afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conductor_platform.localservers import LocalServer, free_port, start_nats, start_postgres
from tests.system import System, conductor_up, wait_for

pytestmark = pytest.mark.chaos


@pytest.fixture
def nats_folder(tmp_path: Path) -> Path:
    return tmp_path / "nats"


@pytest.fixture
def system_on_own_nats(tmp_path: Path, nats_folder: Path) -> Iterator[tuple[System, LocalServer, int]]:
    # Servers of its own: a log or a projector position left by other tests would not match.
    nats_port = free_port()
    nats = start_nats(nats_folder, nats_port)
    postgres = start_postgres(tmp_path / "pg")
    try:
        with conductor_up(tmp_path, "chaos", memory="1G", NATS_URL=nats.url, DATABASE_URL=postgres.url) as system:
            yield system, nats, nats_port
    finally:
        nats.stop()
        postgres.stop()


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
