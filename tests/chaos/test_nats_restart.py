"""Chaos: the NATS server dies (SIGKILL) and comes back on the same port and store, mid-flight.

Every job must be accounted for and none run twice: a job running through the outage completes and
its outcome reaches the read models, a submit during the outage is refused with 503 (never lost
silently), and the system works again afterwards.
"""

from __future__ import annotations

import time

import pytest

from tests.system import OwnServers, System, wait_for

pytestmark = pytest.mark.chaos


def test_a_nats_restart_loses_nothing(chaos: tuple[System, OwnServers]) -> None:
    system, servers = chaos
    through = system.submit(f"sleep 4; echo survived >> {system.work}/through.txt")
    wait_for(lambda: system.job(through)["start_time"], what="job started")

    servers.kill(servers.nats)
    refused = system.http.post(
        "/jobs/submit",
        json={"job": {"name": "x", "account": "a", "current_working_directory": str(system.work)}, "script": "true"},
        timeout=30,
    )
    assert refused.status_code == 503, refused.text
    time.sleep(1)
    servers.restart_nats()
    job = system.wait_state(through, "COMPLETED", "FAILED", "NODE_FAIL", timeout=90)
    assert job["state"] == "COMPLETED"
    assert (system.work / "through.txt").read_text() == "survived\n"
    after = system.submit("echo after")
    assert system.wait_state(after, "COMPLETED", "FAILED", timeout=90)["state"] == "COMPLETED"
