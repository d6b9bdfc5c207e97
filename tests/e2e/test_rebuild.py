"""`conductor projector --rebuild` as an operator runs it, beside a running system: the read models
are dropped and rebuilt from the log, and say the same afterwards."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from conductor_platform.settings import async_database_url
from tests.system import system_on_own_servers, wait_for

pytestmark = pytest.mark.e2e


async def _tamper(url: str) -> None:
    engine = create_async_engine(async_database_url(url))
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE jobs SET name = 'tampered', state = 'PENDING', exit_code = NULL"))
    await engine.dispose()


def test_rebuild_replays_the_log_into_the_same_read_models(tmp_path: Path) -> None:
    with system_on_own_servers(tmp_path, "rebuild") as (system, servers):
        done = system.submit("echo one")
        failed = system.submit("exit 3")
        system.wait_state(done, "COMPLETED")
        system.wait_state(failed, "FAILED")
        before = system.http.get("/jobs").json()["jobs"]
        asyncio.run(_tamper(servers.postgres.url))  # read models gone wrong: only the log can say what is right
        assert {j["name"] for j in system.http.get("/jobs").json()["jobs"]} == {"tampered"}

        rebuild = subprocess.Popen(
            [sys.executable, "-m", "conductor", "projector", "--rebuild"], env=dict(os.environ, **servers.env)
        )
        try:
            wait_for(lambda: system.http.get("/jobs").json()["jobs"] == before, what="rebuilt read models")
        finally:
            rebuild.send_signal(signal.SIGINT)
            assert rebuild.wait(30) == 0
        assert [(j["job_id"], j["state"], j["exit_code"]) for j in before] == [
            (failed, "FAILED", 3),
            (done, "COMPLETED", 0),
        ]
