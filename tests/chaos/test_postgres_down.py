"""Chaos: PostgreSQL goes away (SIGKILL) and comes back. The log keeps working: submits are
accepted and jobs run; reads answer 503 meanwhile; the read models catch up afterwards."""

from __future__ import annotations

import pytest

from tests.system import OwnServers, System, wait_for

pytestmark = pytest.mark.chaos


def test_postgres_down_loses_nothing(chaos: tuple[System, OwnServers]) -> None:
    system, servers = chaos
    servers.kill(servers.postgres)
    job_id = system.submit(f"echo ran >> {system.work}/ran.txt")  # the log does not need Postgres
    wait_for(lambda: (system.work / "ran.txt").exists(), what="job ran while Postgres was down")
    down = system.http.get(f"/jobs/query/{job_id}")
    assert down.status_code == 503 and "unavailable" in down.json()["detail"]
    assert system.http.get("/readyz").status_code == 503
    servers.restart_postgres()
    assert system.wait_state(job_id, "COMPLETED", "FAILED", timeout=90)["state"] == "COMPLETED"
    assert (system.work / "ran.txt").read_text() == "ran\n"
    assert system.http.get("/readyz").status_code == 200
