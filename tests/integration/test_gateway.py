"""The HTTP contract, on real NATS and PostgreSQL (the gateway in-process, the projector beside it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_gateway import queries
from conductor_gateway.app import create_app
from conductor_gateway.settings import GatewaySettings
from conductor_platform.bus import Bus
from conductor_projector.service import run as run_projector
from conductor_projector.settings import ProjectorSettings
from tests.integration.helpers import eventually
from tests.unit.scheduling import node

JOB = {
    "name": "test-job",
    "account": "user1",
    "partition": "default",
    "ntasks_per_node": 1,
    "cpus_per_task": 1,
    "memory_per_node": "100M",
    "time_limit": "60",
    "current_working_directory": "/tmp/jobs",
    "standard_output": "stdout-%j.txt",
}


def body(**job: Any) -> dict[str, Any]:
    return {"job": JOB | job, "script": "#!/bin/bash\necho hi\n"}


@contextlib.asynccontextmanager
async def gateway(settings: GatewaySettings, *, raise_app_exceptions: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in-process; ``raise_app_exceptions=False`` answers a crash as the 500 a client sees."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


@pytest.fixture
async def client(bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(GatewaySettings(nats_url=nats_url, database_url=database_url, max_script_bytes=1000)) as client:
        yield client


@pytest.fixture
async def projector(bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_projector(ProjectorSettings(nats_url=nats_url, database_url=database_url), stop=stop)
    )
    yield
    stop.set()
    await task


async def test_submit_then_query_reads_its_own_write(client: httpx.AsyncClient) -> None:
    answer = await client.post("/jobs/submit", json=body())
    assert answer.status_code == 200
    job_id = answer.json()["job_id"]
    assert job_id.isdigit()
    # No projector runs here: the job is still found, read from the log.
    job = (await client.get(f"/jobs/query/{job_id}")).json()
    assert job["state"] == "PENDING" and job["name"] == "test-job"
    assert job["standard_output"] == f"/tmp/jobs/stdout-{job_id}.txt"


async def test_idempotency_key_returns_the_same_job(client: httpx.AsyncClient) -> None:
    first = await client.post("/jobs/submit", json=body(), headers={"Idempotency-Key": "abc"})
    again = await client.post("/jobs/submit", json=body(), headers={"Idempotency-Key": "abc"})
    other = await client.post("/jobs/submit", json=body(), headers={"Idempotency-Key": "xyz"})
    assert first.json() == again.json() != other.json()


@pytest.mark.parametrize(
    ("payload", "status", "says"),
    [
        (body(memory_per_node="8X"), 422, "invalid memory"),
        (body(time_limit="abc"), 422, "invalid time limit"),
        (body(cpus_per_task=0), 422, "greater than or equal to 1"),
        (body(ntasks_per_node=-2), 422, "greater than or equal to 1"),
        ({"job": JOB, "script": ""}, 422, "script is empty"),
        # sbatch refuses them too: bash would fail at the first line, after the job's wait in the queue.
        ({"job": JOB, "script": "#!/bin/bash\r\necho hi\r\n"}, 422, "DOS line breaks"),
        ({"job": {"name": "x"}, "script": "true"}, 422, "Field required"),
        ({"script": "true"}, 422, "Field required"),
        ({"job": JOB, "script": "x" * 1001}, 413, "over the limit"),
        ({"job": JOB, "script": "x" * 200_000}, 413, "over"),
    ],
)
async def test_bad_input_gets_a_clear_4xx(
    client: httpx.AsyncClient, payload: dict[str, Any], status: int, says: str
) -> None:
    answer = await client.post("/jobs/submit", json=payload)
    assert answer.status_code == status
    assert says in answer.text


async def test_unknown_jobs_are_404(client: httpx.AsyncClient, bus: Bus) -> None:
    assert (await client.get("/jobs/query/999999")).status_code == 404
    assert (await client.post("/jobs/cancel/999999")).status_code == 404
    registered = await bus.publish(node("n1", 1))  # a sequence that is not a submission is not a job
    assert (await client.get(f"/jobs/query/{registered}")).status_code == 404
    assert (await client.get("/jobs/query/0")).status_code == 422
    assert (await client.get("/jobs/query/abc")).status_code == 422


async def test_list_filters_pages_and_cancel_rules(client: httpx.AsyncClient, bus: Bus, projector: None) -> None:
    ids = [
        (await client.post("/jobs/submit", json=body(account=a))).json()["job_id"] for a in ("ann", "bob", "ann", "ann")
    ]
    await bus.publish(ev.JobPlaced(job_id=int(ids[0]), node="n1", cores=(0,), memory_mb=1), by_scheduler=True)
    await bus.publish(ev.JobCompleted(job_id=int(ids[0]), node="n1"))

    async def listed() -> dict[str, Any] | None:
        page = (await client.get("/jobs", params={"account": "ann"})).json()
        return page if len(page["jobs"]) == 3 and page["jobs"][-1]["state"] == "COMPLETED" else None

    page = await eventually(listed, what="jobs projected")
    assert [j["job_id"] for j in page["jobs"]] == [ids[3], ids[2], ids[0]]
    first = (await client.get("/jobs", params={"account": "ann", "limit": 2})).json()
    second = (await client.get("/jobs", params={"account": "ann", "limit": 2, "cursor": first["next_cursor"]})).json()
    assert [j["job_id"] for j in first["jobs"] + second["jobs"]] == [ids[3], ids[2], ids[0]]
    # Stripped as a submit's account is.
    padded = (await client.get("/jobs", params={"account": "  ann  "})).json()
    assert [j["job_id"] for j in padded["jobs"]] == [ids[3], ids[2], ids[0]]
    assert second["next_cursor"] is None
    assert [j["job_id"] for j in (await client.get("/jobs", params={"state": "COMPLETED"})).json()["jobs"]] == [ids[0]]
    assert (await client.get("/jobs", params={"state": "BOGUS"})).status_code == 422

    finished = await client.post(f"/jobs/cancel/{ids[0]}")
    assert finished.status_code == 409 and "COMPLETED" in finished.json()["detail"]
    pending = await client.post(f"/jobs/cancel/{ids[1]}")
    assert pending.status_code == 200 and pending.json()["detail"] == "cancel requested"


async def test_job_reads_leave_the_script_and_environment_in_postgresql(
    client: httpx.AsyncClient, engine: AsyncEngine, projector: None
) -> None:
    # No answer shows them, and a script may take 512 KiB: a list of 500 big-script jobs took ~450 MB
    # of the gateway's memory per request, a few concurrent lists over a gigabyte.
    job_id = int((await client.post("/jobs/submit", json=body(environment={"A": "1"}))).json()["job_id"])

    async def projected() -> bool:
        return (await client.get(f"/jobs/query/{job_id}")).json().get("state") == "PENDING" and bool(
            await queries.job(engine, job_id)
        )

    await eventually(projected, what="job projected")
    row = await queries.job(engine, job_id)
    listed = await queries.jobs(engine, state=None, account=None, name=None, before=None, limit=10)
    for read in (row, *listed):
        assert read is not None and "script" not in read and "environment" not in read and read["job_id"]


async def test_a_postgresql_that_hangs_is_a_503_within_the_database_timeout(bus: Bus, nats_url: str) -> None:
    # It accepts connections and answers nothing (stopped, or behind a network that drops packets):
    # each query waited out asyncpg's 60 s connect timeout, or for ever on an open connection.
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"postgresql://postgres@127.0.0.1:{port}/conductor"
    try:
        async with gateway(GatewaySettings(nats_url=nats_url, database_url=url, database_timeout_s=0.5)) as client:
            for path in ("/jobs", "/nodes", "/readyz"):
                answer = await asyncio.wait_for(client.get(path), 30)  # a deadline, not a speed: it was 60 s
                assert answer.status_code == 503, (path, answer.text)
    finally:
        server.close()
        for writer in held:
            writer.close()
    assert held  # the gateway did reach it


async def test_nodes_health_and_readiness(client: httpx.AsyncClient, bus: Bus, projector: None) -> None:
    await bus.publish(node("n1", 4, 2048))

    async def nodes() -> list[dict[str, Any]]:
        return list((await client.get("/nodes")).json()["nodes"])

    [n1] = await eventually(nodes, what="node projected")
    assert (n1["name"], n1["cpus"], n1["memory_mb"], n1["state"]) == ("n1", 4, 2048, "UP")
    assert (await client.get("/healthz")).json() == {"status": "ok"}

    async def caught_up() -> dict[str, Any] | None:
        ready = (await client.get("/readyz")).json()
        return ready if ready.get("projector_lag") == 0 else None

    ready = await eventually(caught_up, what="read models caught up")
    assert ready["status"] == "ready" and ready["log_position"] >= 1
    assert (await client.get("/docs")).status_code == 200
    assert "conductor_gateway_submits_total" in (await client.get("/metrics/")).text


@pytest.mark.parametrize("table", ["jobs", "dead_letters"])
async def test_a_read_model_table_dropped_by_hand_is_not_ready(
    client: httpx.AsyncClient, engine: AsyncEngine, table: str
) -> None:
    # Every job query failed (503), and /readyz, which read only the positions, said ready. (A job not
    # projected yet is looked up in dead_letters too.)
    assert (await client.get("/readyz")).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP TABLE {table}"))
    answer = await client.get("/readyz")
    assert answer.status_code == 503 and answer.json()["problems"] == ["postgres: ProgrammingError"]


async def test_openapi_documents_the_errors(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"413", "422", "503"} <= set(paths["/jobs/submit"]["post"]["responses"])
    assert {"404", "409"} <= set(paths["/jobs/cancel/{job_id}"]["post"]["responses"])


async def test_nodes_show_what_is_allocated(client: httpx.AsyncClient, bus: Bus, projector: None) -> None:
    await bus.publish(node("n1", 4, 2048))
    job_id = int((await client.post("/jobs/submit", json=body(cpus_per_task=3, memory_per_node="1G"))).json()["job_id"])
    await bus.publish(ev.JobPlaced(job_id=job_id, node="n1", cores=(0, 1, 2), memory_mb=1024), by_scheduler=True)

    async def n1(allocation: str) -> dict[str, Any] | None:
        rows = (await client.get("/nodes")).json()["nodes"]
        return rows[0] if rows and rows[0]["allocation"] == allocation else None

    mixed = await eventually(lambda: n1("mixed"), what="allocation projected")
    assert (mixed["cpus_alloc"], mixed["memory_alloc_mb"]) == (3, 1024)
    await bus.publish(node("n1", 4, 2048))  # the executor restarted: what runs there still counts
    await bus.publish(ev.JobCompleted(job_id=job_id, node="n1"))
    idle = await eventually(lambda: n1("idle"), what="allocation released")
    assert (idle["cpus_alloc"], idle["memory_alloc_mb"]) == (0, 0)


async def test_output_comes_from_the_object_store_whichever_node_ran_the_job(
    client: httpx.AsyncClient, bus: Bus, projector: None
) -> None:
    # The output file lives on another node: this gateway cannot see its path, only the object store.
    job_id = (await client.post("/jobs/submit", json=body(current_working_directory="/nonexistent/node7"))).json()[
        "job_id"
    ]
    assert (await client.get(f"/jobs/{job_id}/output")).status_code == 409  # PENDING: nothing yet
    await bus.publish(ev.JobPlaced(job_id=int(job_id), node="n7", cores=(0,), memory_mb=100), by_scheduler=True)
    await eventually(lambda: _output_status(client, job_id, 409, "runs on node n7"), what="running job answered")
    await (await bus.outputs()).put(subjects.output_object(int(job_id), "stdout"), b"made on n7\n")
    await bus.publish(ev.JobCompleted(job_id=int(job_id), node="n7"))

    async def served() -> str | None:
        answer = await client.get(f"/jobs/{job_id}/output")
        return answer.text if answer.status_code == 200 else None

    assert await eventually(served, what="output served") == "made on n7\n"
    stderr = await client.get(f"/jobs/{job_id}/output", params={"stream": "stderr"})
    assert stderr.status_code == 404 and "joined to stdout" in stderr.json()["detail"]


async def _output_status(client: httpx.AsyncClient, job_id: str, status: int, says: str) -> bool:
    answer = await client.get(f"/jobs/{job_id}/output")
    return answer.status_code == status and says in answer.text


async def test_a_chunked_body_over_the_limit_is_413_before_it_is_all_read(client: httpx.AsyncClient) -> None:
    payload = json.dumps(body(environment={"BIG": "x" * 100_000})).encode()
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the size is known only once read
        nonlocal sent
        for i in range(0, 50 * 1024 * 1024, 65536):  # 50 MiB, were it read to the end
            sent += 1
            yield payload[i : i + 65536] or b" " * 65536

    answer = await client.post("/jobs/submit", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and "over the limit" in answer.json()["detail"]
    assert sent < 20  # stopped reading at the limit: 6 x (script + environment) + 64 KiB, ~860 KB here


async def test_a_job_the_read_models_could_not_record_says_so(
    client: httpx.AsyncClient, bus: Bus, engine: AsyncEngine
) -> None:
    from sqlalchemy import insert

    from conductor_projector import tables as t

    job_id = int((await client.post("/jobs/submit", json=body())).json()["job_id"])
    assert (await client.get(f"/jobs/query/{job_id}")).json()["message"] is None
    async with engine.begin() as conn:  # what the projector records when PostgreSQL refuses a submission
        await conn.execute(
            insert(t.dead_letters).values(
                consumer="projector",
                stream_seq=job_id,
                subject=subjects.SUBMITTED,
                event_type="JobSubmitted",
                job_id=job_id,
                error="DataError: value out of range",
                data="{}",
            )
        )
    view = (await client.get(f"/jobs/query/{job_id}")).json()
    assert "could not record this job" in view["message"] and "out of range" in view["message"]


async def test_a_script_under_its_limit_is_accepted_however_its_json_escapes_it(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str
) -> None:
    settings = GatewaySettings(nats_url=nats_url, database_url=database_url, max_script_bytes=100_000)
    script = "echo " + "ж" * 45_000  # 90 KB of UTF-8; 270 KB as JSON's \u0436 escapes (json.dumps' default)
    async with gateway(settings) as client:
        content = json.dumps({"job": JOB, "script": script}).encode()
        assert len(content) > 250_000
        answer = await client.post("/jobs/submit", content=content, headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        too_big = json.dumps({"job": JOB, "script": script * 2}).encode()
        refused = await client.post("/jobs/submit", content=too_big, headers={"Content-Type": "application/json"})
        assert refused.status_code == 413 and "script over the limit" in refused.json()["detail"]


async def test_a_body_that_never_completes_is_408(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str
) -> None:
    settings = GatewaySettings(nats_url=nats_url, database_url=database_url, body_timeout_s=0.5)

    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"job": '
        await asyncio.sleep(30)  # a client that stalls (or a slowloris): the gateway stops waiting first
        yield b"{}}"

    async with gateway(settings) as client:
        answer = await client.post("/jobs/submit", content=trickle(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 408 and "not received within" in answer.json()["detail"]


async def test_requests_are_counted_by_route_template_and_status(client: httpx.AsyncClient) -> None:
    def count(route: str, status: str) -> float:
        labels = {"route": route, "method": "GET", "status": status}
        return REGISTRY.get_sample_value("conductor_http_requests_total", labels) or 0.0

    before = count("/jobs/query/{job_id}", "404"), count("unmatched", "404")
    assert (await client.get("/jobs/query/987654")).status_code == 404
    assert (await client.get("/no/such/path/42")).status_code == 404
    assert (count("/jobs/query/{job_id}", "404"), count("unmatched", "404")) == (before[0] + 1, before[1] + 1)
