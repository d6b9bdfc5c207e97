"""GET /jobs/{id}/output never opens a path a user named: a finished job's output comes only from the
object store; a running job's file is read only once the executor has started the job, only when the
gateway is allowed to, and only as a regular file reached without symlinks (issue 5, item 4)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_gateway.settings import GatewaySettings
from conductor_platform.bus import Bus
from conductor_projector import sink
from tests.integration.helpers import read_log
from tests.integration.test_gateway import JOB, gateway
from tests.unit.scheduling import submitted

NAME = "tests"


async def project(bus: Bus, engine: AsyncEngine) -> int:
    """Apply the log to the read models with the projector's own write path, deterministically (no
    projector task to wait for); returns the position reached."""
    async with engine.connect() as conn:
        start = await sink.position(conn, NAME)
    fresh = [(seq, event) for seq, _, event in await read_log(bus) if seq > start]
    return await sink.apply_batch(engine, NAME, fresh)


@pytest.fixture
async def settings(bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str) -> GatewaySettings:
    # Job ids start again at 1 on the fresh stream: outputs of earlier tests' jobs must not answer.
    with contextlib.suppress(NotFoundError):
        await bus.js.delete_object_store(subjects.OUTPUT_BUCKET)
    return GatewaySettings(nats_url=nats_url, database_url=database_url)


@pytest.fixture
async def client(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(settings) as c:
        yield c


async def submit(client: httpx.AsyncClient, **job: Any) -> int:
    answer = await client.post("/jobs/submit", json={"job": JOB | job, "script": "true"})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["job_id"])


async def place(bus: Bus, job_id: int, *, start: bool) -> None:
    await bus.publish(ev.JobPlaced(job_id=job_id, node="n1", cores=(0,), memory_mb=100), by_scheduler=True)
    if start:
        await bus.publish(ev.JobStarted(job_id=job_id, node="n1", pid=4242))


async def output(client: httpx.AsyncClient, job_id: int, stream: str = "stdout") -> httpx.Response:
    return await client.get(f"/jobs/{job_id}/output", params={"stream": stream})


@pytest.mark.parametrize("path", ["/proc/self/environ", "/etc/passwd"])
async def test_a_job_cancelled_before_it_ran_never_reads_the_path_it_names(
    client: httpx.AsyncClient, bus: Bus, engine: AsyncEngine, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONDUCTOR_TEST_SECRET", "s3cr3t")  # what /proc/self/environ served before
    # Straight to the log: the gateway now refuses /proc paths at submit, but older jobs may have them.
    job = submitted().model_copy(update={"working_directory": "/tmp", "standard_output": path, "standard_error": path})
    job_id = await bus.publish(job)
    await bus.publish(ev.JobCancelled(job_id=job_id))
    await project(bus, engine)
    # Both streams name one file: stderr is joined to stdout, and says so.
    for stream, says in (("stdout", "before it started"), ("stderr", "joined to stdout")):
        answer = await output(client, job_id, stream)
        assert answer.status_code == 404
        assert says in answer.json()["detail"]
        assert "s3cr3t" not in answer.text and "root:" not in answer.text


async def test_a_finished_job_is_served_from_the_object_store_only(
    client: httpx.AsyncClient, bus: Bus, engine: AsyncEngine, tmp_path: Path
) -> None:
    (tmp_path / "out.txt").write_text("a file the gateway can see\n")
    job_id = await submit(client, current_working_directory=str(tmp_path), standard_output="out.txt")
    await place(bus, job_id, start=True)
    await bus.publish(ev.JobCompleted(job_id=job_id, node="n1"))
    await project(bus, engine)
    # Nothing stored: the executor stores nothing for an empty file, and the local file is never read.
    missing = await output(client, job_id)
    assert (missing.status_code, missing.text) == (200, "")

    await (await bus.outputs()).put(subjects.output_object(job_id, "stdout"), b"what the executor kept\n")
    assert (await output(client, job_id)).text == "what the executor kept\n"


async def test_a_running_job_is_read_live_once_started(
    client: httpx.AsyncClient, bus: Bus, engine: AsyncEngine, tmp_path: Path
) -> None:
    (tmp_path / "out.txt").write_text("step 1\n")
    job_id = await submit(client, current_working_directory=str(tmp_path), standard_output="out.txt")
    await place(bus, job_id, start=False)
    await project(bus, engine)
    # Placed, not started: the executor has not opened the path yet; what is there is not the job's.
    placed = await output(client, job_id)
    assert placed.status_code == 409 and "not started yet" in placed.json()["detail"]

    await bus.publish(ev.JobStarted(job_id=job_id, node="n1", pid=4242))
    await project(bus, engine)
    live = await output(client, job_id)
    assert live.status_code == 200 and live.text == "step 1\n"


async def test_live_reads_can_be_turned_off(
    settings: GatewaySettings, bus: Bus, engine: AsyncEngine, tmp_path: Path
) -> None:
    (tmp_path / "out.txt").write_text("step 1\n")
    async with gateway(settings.model_copy(update={"local_output": False})) as client:
        job_id = await submit(client, current_working_directory=str(tmp_path), standard_output="out.txt")
        await place(bus, job_id, start=True)
        await project(bus, engine)
        answer = await output(client, job_id)
    assert answer.status_code == 409 and "here when it ends" in answer.json()["detail"]


def fifo(path: Path) -> None:
    os.mkfifo(path)


def symlink_to_secret(path: Path) -> None:
    path.symlink_to("/proc/self/environ")


def hard_link_to_secret(path: Path) -> None:
    secret = path.parent / "secret.env"
    secret.write_text("TOKEN=s3cr3t\n")
    os.link(secret, path)


def directory_symlink(path: Path) -> None:
    # The job swaps a directory on the way for a symlink: /proc/self is where "logs/environ" leads.
    path.parent.rmdir()
    path.parent.symlink_to("/proc/self")


@pytest.mark.parametrize("plant", [fifo, symlink_to_secret, hard_link_to_secret, directory_symlink])
async def test_what_a_running_job_plants_at_its_path_is_not_read(
    client: httpx.AsyncClient,
    bus: Bus,
    engine: AsyncEngine,
    tmp_path: Path,
    plant: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONDUCTOR_TEST_SECRET", "s3cr3t")
    (tmp_path / "logs").mkdir()
    job_id = await submit(client, current_working_directory=str(tmp_path), standard_output="logs/environ")
    await place(bus, job_id, start=True)
    await project(bus, engine)
    plant(tmp_path / "logs" / "environ")
    # A FIFO held a worker thread for good; the others served a file the job had no business showing.
    answer = await output(client, job_id)
    assert answer.status_code == 409 and "s3cr3t" not in answer.text


async def test_a_running_job_with_a_system_file_as_output_is_not_read_live(
    client: httpx.AsyncClient, bus: Bus, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/proc/<pid>/environ is a regular file with one link: only its place tells it is not a job's.
    The gateway refuses such paths at submit; this job reached the log some other way."""
    monkeypatch.setenv("CONDUCTOR_TEST_SECRET", "s3cr3t")
    mine = f"/proc/{os.getpid()}/environ"  # no symbolic link on the way, unlike /proc/self
    forged = submitted().model_copy(update={"working_directory": "/tmp", "standard_output": mine})
    job_id = await bus.publish(forged)
    await place(bus, job_id, start=True)
    await project(bus, engine)
    answer = await output(client, job_id)
    assert answer.status_code == 409 and "s3cr3t" not in answer.text
