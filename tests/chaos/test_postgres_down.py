"""Chaos: PostgreSQL goes away (SIGKILL) and comes back. The log keeps working: submits are
accepted and jobs run; reads answer 503 meanwhile; the read models catch up afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conductor_platform.localservers import LocalServer, free_port, start_nats, start_postgres
from tests.system import System, conductor_up, wait_for

pytestmark = pytest.mark.chaos


@pytest.fixture
def system_on_own_postgres(tmp_path: Path) -> Iterator[tuple[System, LocalServer, int]]:
    # Servers of its own: a log or a projector position left by other tests would not match.
    nats = start_nats(tmp_path / "nats")
    pg_port = free_port()
    postgres = start_postgres(tmp_path / "pg", pg_port)
    try:
        with conductor_up(tmp_path, "chaos", memory="1G", NATS_URL=nats.url, DATABASE_URL=postgres.url) as system:
            yield system, postgres, pg_port
    finally:
        postgres.stop()
        nats.stop()


def test_postgres_down_loses_nothing(system_on_own_postgres: tuple[System, LocalServer, int], tmp_path: Path) -> None:
    system, postgres, pg_port = system_on_own_postgres
    postgres.process.kill()
    postgres.process.wait()
    job_id = system.submit(f"echo ran >> {system.work}/ran.txt")  # the log does not need Postgres
    wait_for(lambda: (system.work / "ran.txt").exists(), what="job ran while Postgres was down")
    down = system.http.get(f"/jobs/query/{job_id}")
    assert down.status_code == 503 and "unavailable" in down.json()["detail"]
    assert system.http.get("/readyz").status_code == 503
    restarted = start_postgres(tmp_path / "pg", pg_port)
    try:
        assert system.wait_state(job_id, "COMPLETED", "FAILED", timeout=90)["state"] == "COMPLETED"
        assert (system.work / "ran.txt").read_text() == "ran\n"
        assert system.http.get("/readyz").status_code == 200
    finally:
        restarted.stop()
