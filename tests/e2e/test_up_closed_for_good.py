"""``conductor up`` starts again a service that ended on a NATS connection closed for good.

The services' credentials are revoked on a nats-server of the test's own (a configuration reload):
the server closes their connections with -ERR and nats-py closes them for good. Every service ends,
``conductor up`` starts each again with its back-off, they connect once the credentials are let in
again, and the next job runs. Ctrl-C afterwards still stops everything."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from conductor.supervisor import SERVICES
from conductor_platform.localservers import free_port, start_postgres
from tests.system import AuthorizedNats, System, conductor_up, wait_for

pytestmark = pytest.mark.e2e


def _services(system: System) -> dict[str, int]:
    """The pid of each service the supervisor runs now."""
    found: dict[str, int] = {}
    for child in psutil.Process(system.process.pid).children():
        try:
            argv = " ".join(child.cmdline())
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:  # gone meanwhile
            continue
        found |= {service: child.pid for service in SERVICES if f"conductor_{service}" in argv}
    return found


def test_services_ended_by_a_closed_connection_come_back(tmp_path: Path) -> None:
    nats = AuthorizedNats(tmp_path / "nats")
    postgres = start_postgres(tmp_path / "pg", free_port())
    try:
        env = {"NATS_URL": nats.service_url, "DATABASE_URL": postgres.url}
        with conductor_up(tmp_path / "up", node="closed", memory="1G", **env) as system:
            first = job_id = system.submit("echo first")
            system.wait_state(job_id, "COMPLETED")
            before = _services(system)
            assert sorted(before) == sorted(SERVICES)

            nats.revoke()
            wait_for(lambda: not set(before.values()) & set(_services(system).values()), 30, "every service ended")
            nats.restore()
            job_id = wait_for(lambda: _submitted(system), 90, "a submit accepted again")
            system.wait_state(job_id, "COMPLETED", timeout=90)
            assert system.job(first)["state"] == "COMPLETED"
            assert sorted(_services(system)) == sorted(SERVICES)
        assert system.process.returncode == 0
    finally:
        postgres.stop()
        nats.server.stop()


def _submitted(system: System) -> str | None:
    try:
        answer = system.http.post("/jobs/submit", json={"job": system.spec(), "script": "echo again"})
    except Exception:  # the gateway between two lives
        return None
    return str(answer.json()["job_id"]) if answer.status_code == 200 else None
