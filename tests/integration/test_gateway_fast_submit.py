"""The submit's short path (FastSubmit) answers as the FastAPI route does, on real NATS: the same
answer and the same event for a valid submit, the route's own errors for everything else."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Receive

from conductor_contracts import events as ev
from conductor_gateway import fast_submit
from conductor_gateway.settings import GatewaySettings
from conductor_platform.bus import Bus
from tests.integration.test_gateway import body, gateway

# FastAPI reads a +json type as JSON too; the short path takes only application/json and hands the
# rest to the route: the same request answered both ways.
SHORT = {"Content-Type": "application/json"}
ROUTE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
async def client(bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(GatewaySettings(nats_url=nats_url, database_url=database_url, max_script_bytes=1000)) as client:
        yield client


async def post(client: httpx.AsyncClient, payload: Any, headers: dict[str, str]) -> httpx.Response:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return await client.post("/jobs/submit", content=data, headers=headers)


async def submitted(bus: Bus, job_id: str) -> dict[str, Any]:
    event = ev.decode((await bus.js.get_msg(bus.stream, seq=int(job_id))).data or b"")
    assert isinstance(event, ev.JobSubmitted)
    return event.model_dump(exclude={"event_id", "occurred_at"})


async def test_a_valid_submit_gets_the_same_answer_and_event_either_way(
    client: httpx.AsyncClient, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed_over: list[bytes] = []
    replay = fast_submit._replay

    def counted(data: bytes, receive: Receive) -> Receive:
        handed_over.append(data)
        return replay(data, receive)

    monkeypatch.setattr(fast_submit, "_replay", counted)
    payload = body(environment={"A": "ж"}, dependency="singleton", requeue=True)
    short, route = await post(client, payload, SHORT), await post(client, payload, ROUTE)
    assert len(handed_over) == 1  # the +json one only: the other was answered by the short path
    assert short.status_code == route.status_code == 200
    assert short.headers["content-type"] == route.headers["content-type"]
    assert short.json().keys() == route.json().keys() == {"job_id"}
    assert await submitted(bus, short.json()["job_id"]) == await submitted(bus, route.json()["job_id"])


@pytest.mark.parametrize(
    "payload",
    [
        body(memory_per_node="8X"),
        body(cpus_per_task=0),
        {"job": body()["job"], "script": ""},
        {"script": "true"},
        {"job": body()["job"], "script": "x" * 1001},  # over max_script_bytes: a 413 from the handler
        body(dependency="afterok:987654321"),  # no such job: a 422 from the handler
        b'{"job": {"name": "a\\ud800"}}',
        b'{"job": ',
        b"",
        [1, 2],
    ],
)
async def test_a_refused_submit_gets_the_same_error_either_way(client: httpx.AsyncClient, payload: Any) -> None:
    short, route = await post(client, payload, SHORT), await post(client, payload, ROUTE)
    assert 400 <= short.status_code < 500
    assert (short.status_code, short.json()) == (route.status_code, route.json())


async def test_headers_the_short_path_does_not_take_go_to_the_route(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"Content-Type": "text/plain"}, {**SHORT, "Idempotency-Key": "bad key"}):
        answer = await post(client, body(), headers)
        assert answer.status_code == 422, (headers, answer.text)
    repeated = [("Content-Type", "application/json"), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    answer = await client.post("/jobs/submit", content=json.dumps(body()).encode(), headers=repeated)
    assert answer.status_code in (200, 422)  # the route's choice (it reads one of them), not a 500


async def test_idempotency_keys_dedupe_on_the_short_path(client: httpx.AsyncClient) -> None:
    first = await post(client, body(), SHORT | {"Idempotency-Key": "fast-1"})
    again = await post(client, body(), SHORT | {"Idempotency-Key": "fast-1"})
    reused = await post(client, body(name="other"), SHORT | {"Idempotency-Key": "fast-1"})
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert reused.status_code == 422 and "already used" in reused.json()["detail"]


async def test_a_short_path_submit_is_counted_under_its_route(client: httpx.AsyncClient) -> None:
    labels = {"route": "/jobs/submit", "method": "POST", "status": "200"}
    before = REGISTRY.get_sample_value("conductor_http_requests_total", labels) or 0.0
    assert (await post(client, body(), SHORT)).status_code == 200
    assert REGISTRY.get_sample_value("conductor_http_requests_total", labels) == before + 1


async def test_a_repeated_content_type_is_read_as_the_route_reads_it(client: httpx.AsyncClient) -> None:
    # Starlette (and so the route) reads the first of repeated headers: text/plain first is not JSON
    # to the route, which refuses it; the short path must not accept it by reading the last one.
    data = json.dumps(body()).encode()
    for first, last in (("text/plain", "application/json"), ("application/json", "text/plain")):
        repeated = [("Content-Type", first), ("Content-Type", last)]
        answer = await client.post("/jobs/submit", content=data, headers=repeated)
        alone = await client.post("/jobs/submit", content=data, headers={"Content-Type": first})
        assert answer.status_code == alone.status_code, (repeated, answer.text, alone.text)


def _raw(job_tail: bytes = b"", script: bytes = b"true") -> bytes:
    job = json.dumps(body()["job"]).encode()[:-1] + job_tail + b"}"
    return b'{"job": ' + job + b', "script": "' + script + b'"}'


@pytest.mark.parametrize(
    "payload",
    [
        _raw(script=b"echo \xe9"),  # latin-1, not UTF-8
        _raw(script=b"echo \xed\xa0\x80"),  # a surrogate as raw (CESU) bytes
        _raw(script=b"echo \\ud800"),
        _raw(script=b"echo \\u0000"),
        _raw(b', "cpus_per_task": ' + b"9" * 5000),  # over Python's int digits limit
        _raw(b', "cpus_per_task": NaN'),
        _raw(b', "cpus_per_task": 1e400'),
        _raw(b', "cpus_per_task": 01'),
        _raw() + b" trailing",
    ],
)
async def test_odd_bytes_get_the_same_error_either_way(client: httpx.AsyncClient, payload: bytes) -> None:
    short, route = await post(client, payload, SHORT), await post(client, payload, ROUTE)
    assert 400 <= short.status_code < 500, short.text
    assert (short.status_code, short.json()) == (route.status_code, route.json())


@pytest.mark.parametrize(
    "payload",
    [
        b"\xef\xbb\xbf" + _raw(),  # a UTF-8 BOM
        _raw().decode().encode("utf-16"),
        _raw(b', "name": "twice", "cpus_per_task": 2.0, "requeue": "yes"', b"echo \\ud83d\\ude00"),
        _raw(b', "environment": {"A": "1", "A": "2"}, "cpus_per_task": "3"'),
    ],
)
async def test_odd_but_valid_bodies_store_the_same_event_either_way(
    client: httpx.AsyncClient, bus: Bus, payload: bytes
) -> None:
    short, route = await post(client, payload, SHORT), await post(client, payload, ROUTE)
    assert short.status_code == route.status_code, (short.text, route.text)
    if short.status_code == 200:
        assert await submitted(bus, short.json()["job_id"]) == await submitted(bus, route.json()["job_id"])


async def test_a_client_that_leaves_mid_body_submits_nothing() -> None:
    from fastapi import FastAPI

    calls: list[str] = []
    sent: list[object] = []

    async def downstream(scope: object, receive: object, send: object) -> None:
        calls.append("route")

    async def accept(*_: object) -> object:
        calls.append("accept")
        raise AssertionError("accepted a body that never arrived")

    whole = json.dumps(body()).encode()
    messages: list[dict[str, object]] = [
        {"type": "http.request", "body": whole[:20], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    async def send(message: object) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "path": "/jobs/submit",
        "method": "POST",
        "headers": [(b"content-type", b"application/json")],
    }
    await fast_submit.FastSubmit(downstream, FastAPI(), accept)(scope, receive, send)  # type: ignore[arg-type]
    assert calls == [] and sent == []
