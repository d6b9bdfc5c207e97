"""examples/follow_up.py, run as its README says (its own process), on a real NATS and a gateway
over real HTTP: a completed job of the watched name gets its follow-up job, other completions none."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_gateway.settings import GatewaySettings
from conductor_platform.bus import Bus
from tests.integration.helpers import eventually, read_log
from tests.integration.served import served_gateway
from tests.unit.scheduling import submitted


async def follow_ups(bus: Bus) -> list[tuple[int, ev.JobSubmitted]]:
    return [
        (seq, event)
        for seq, _, event in await read_log(bus)
        if isinstance(event, ev.JobSubmitted) and event.name.endswith("-follow-up")
    ]


EXAMPLE = Path(__file__).parents[2] / "examples" / "follow_up.py"


@contextmanager
def example(nats_url: str, gateway_url: str, watch: str, script: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = os.environ | {"NATS_URL": nats_url, "CONDUCTOR_URL": gateway_url}
    process = subprocess.Popen([sys.executable, str(EXAMPLE), watch, str(script)], env=env)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(30)


async def subscribed(bus: Bus) -> bool:
    # Its consumers start at new events: publish only once they exist.
    return len(await bus.js.consumers_info(subjects.STREAM)) == 2


async def test_a_completed_job_of_the_watched_name_gets_its_follow_up(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "run-tests.sh"
    script.write_text("#!/bin/bash\necho tests\n")
    settings = GatewaySettings(nats_url=nats_url, database_url=database_url)
    async with served_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
        with example(nats_url, url, "nightly", script) as process:
            await eventually(lambda: subscribed(bus), 30, "the example subscribed")
            nightly = await bus.publish(submitted().model_copy(update={"name": "nightly", "account": "ann"}))
            other = await bus.publish(submitted().model_copy(update={"name": "other"}))
            await bus.publish(ev.JobCompleted(job_id=other, node="n1"))
            await bus.publish(ev.JobCompleted(job_id=nightly, node="n1"))
            found = await eventually(lambda: follow_ups(bus), 20, "the follow-up job submitted")
            assert process.poll() is None
        [(job_id, follow_up)] = found
        assert follow_up.environment == {"PREDECESSOR_JOB_ID": str(nightly)} and follow_up.account == "ann"
        job = (await client.get(f"/jobs/query/{job_id}")).json()
        assert job["name"] == "nightly-follow-up" and job["state"] == "PENDING"
