"""Idempotency-Key: a retry gets the first job; a reuse of the key for another request is refused,
never answered with another job's id (issue 5, item 6)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import events as ev
from conductor_gateway.settings import GatewaySettings
from conductor_platform.bus import Bus
from tests.integration.helpers import read_log
from tests.integration.test_gateway import JOB, gateway


@pytest.fixture
async def settings(bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str) -> GatewaySettings:
    return GatewaySettings(nats_url=nats_url, database_url=database_url)


@pytest.fixture
async def client(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(settings) as c:
        yield c


def body(script: str = "echo hi\n", **job: Any) -> dict[str, Any]:
    return {"job": JOB | job, "script": script}


async def submit(client: httpx.AsyncClient, payload: dict[str, Any], key: str) -> httpx.Response:
    return await client.post("/jobs/submit", json=payload, headers={"Idempotency-Key": key})


async def submissions(bus: Bus) -> list[ev.JobSubmitted]:
    return [e for _, _, e in await read_log(bus) if isinstance(e, ev.JobSubmitted)]


async def test_the_same_key_and_request_is_the_same_job(client: httpx.AsyncClient, bus: Bus) -> None:
    first = await submit(client, body(), "retry-1")
    # The same request written differently: keys reordered, a default spelled out.
    again = await submit(client, {"script": "echo hi\n", "job": {"partition": "default", **JOB}}, "retry-1")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert len(await submissions(bus)) == 1


@pytest.mark.parametrize(
    "other",
    [body(script="rm -rf ~/results\n"), body(memory_per_node="200M"), body(environment={"A": "1"})],
    ids=["script", "memory", "environment"],
)
async def test_the_same_key_for_another_request_is_refused(
    client: httpx.AsyncClient, bus: Bus, other: dict[str, Any]
) -> None:
    first = await submit(client, body(), "reused")
    reused = await submit(client, other, "reused")
    # Was a 200 with the first job's id: the second job was dropped without a word.
    assert reused.status_code == 422
    detail = reused.json()["detail"]
    assert "Idempotency-Key" in detail and f"job {first.json()['job_id']}" in detail
    [kept] = await submissions(bus)
    assert kept.script == "echo hi\n"


async def test_keys_are_per_account(client: httpx.AsyncClient, bus: Bus) -> None:
    ann = await submit(client, body(account="ann"), "nightly")
    bob = await submit(client, body(account="bob"), "nightly")
    assert ann.status_code == bob.status_code == 200
    assert ann.json() != bob.json()
    assert {s.account for s in await submissions(bus)} == {"ann", "bob"}
    assert (await submit(client, body(account="bob"), "nightly")).json() == bob.json()


async def test_concurrent_reuses_make_one_job_and_one_refusal(client: httpx.AsyncClient, bus: Bus) -> None:
    answers = await asyncio.gather(*(submit(client, body(script=f"echo {i}\n"), "race") for i in range(4)))
    assert sorted(a.status_code for a in answers) == [200, 422, 422, 422]
    [kept] = await submissions(bus)
    [winner] = [a for a in answers if a.status_code == 200]
    assert kept.script == next(f"echo {i}\n" for i, a in enumerate(answers) if a is winner)


async def test_any_gateway_answers_a_retry_the_same_way(client: httpx.AsyncClient, settings: GatewaySettings) -> None:
    first = await submit(client, body(), "k-1")
    async with gateway(settings) as other:  # no memory shared with the first gateway: only the log
        assert (await submit(other, body(), "k-1")).json() == first.json()
        assert (await submit(other, body(script="other\n"), "k-1")).status_code == 422


async def test_without_a_key_every_submit_is_a_job(client: httpx.AsyncClient, bus: Bus) -> None:
    ids = {(await client.post("/jobs/submit", json=body())).json()["job_id"] for _ in range(2)}
    assert len(ids) == 2 and len(await submissions(bus)) == 2


async def test_a_key_whose_job_left_the_log_says_so(client: httpx.AsyncClient, bus: Bus) -> None:
    first = await submit(client, body(), "gone")
    # The server keeps the key for its window even when the message is removed (nats-server 2.15).
    await bus.js.delete_msg(bus.stream, int(first.json()["job_id"]))
    again = await submit(client, body(), "gone")
    assert again.status_code == 422 and "no longer in the log" in again.json()["detail"]


async def test_a_key_given_twice_is_refused_not_half_used(client: httpx.AsyncClient, bus: Bus) -> None:
    # Only the first was used: a retry with the second alone made a second job.
    headers = [("Idempotency-Key", "twice-a"), ("Idempotency-Key", "twice-b")]
    answer = await client.post("/jobs/submit", json=body(), headers=headers)
    assert answer.status_code == 422 and "more than once" in answer.json()["detail"]
    assert await submissions(bus) == []
