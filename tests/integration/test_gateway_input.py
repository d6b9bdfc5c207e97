"""Bad input of every kind is a 4xx that says what is wrong, never a 5xx: bodies, query and path
parameters, headers (issue 5, items 1 and 8)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import nats.errors
import pytest
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_gateway.settings import GatewaySettings
from conductor_platform.bus import Bus
from tests.integration.test_gateway import JOB, gateway
from tests.unit.scheduling import submitted


@pytest.fixture
async def client(bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(GatewaySettings(nats_url=nats_url, database_url=database_url), raise_app_exceptions=False) as c:
        yield c


def raw(job: dict[str, Any], script: str = "true") -> bytes:
    # ensure_ascii: a lone surrogate travels as the JSON escape \ud800, as any client can send it.
    return json.dumps({"job": job, "script": script}, ensure_ascii=True).encode()


async def post(client: httpx.AsyncClient, content: bytes, **headers: str) -> httpx.Response:
    return await client.post("/jobs/submit", content=content, headers={"Content-Type": "application/json"} | headers)


def fields(answer: httpx.Response) -> list[str]:
    """The fields a 422 names, as dotted paths."""
    return [".".join(str(p) for p in error["loc"]) for error in answer.json()["detail"]]


@pytest.mark.parametrize(
    ("content", "field", "says"),
    [
        # Values PostgreSQL or the OS refused later, stopping the projector (item 1).
        (raw(JOB | {"time_limit": "99999999"}), "body.job.time_limit", "at most 365 days"),
        (raw(JOB | {"memory_per_node": "2048T"}), "body.job.memory_per_node", "at most 2147483647M"),
        (raw(JOB | {"standard_output": "out\x00"}), "body.job.standard_output", "NUL"),
        (raw(JOB | {"standard_error": "err\x00"}), "body.job.standard_error", "NUL"),
        (raw(JOB | {"current_working_directory": "/tmp/\x00"}), "body.job.current_working_directory", "NUL"),
        (raw(JOB | {"name": "a\x00"}), "body.job.name", "NUL"),
        (raw(JOB | {"account": "a\x00"}), "body.job.account", "NUL"),
        (raw(JOB | {"environment": {"A": "\x00"}}), "body.job.environment.A", "NUL"),
        (raw(JOB | {"standard_output": "%x" * 130}), "body.job.standard_output", "at most 255"),
        # 500s (item 8).
        (raw(JOB | {"memory_per_node": "1" + "0" * 400 + "K"}), "body.job.memory_per_node", "at most"),
        (raw(JOB, "echo \ud800"), "body.script", "lone surrogate"),
        (raw(JOB | {"name": "\ud800"}), "body.job.name", "lone surrogate"),
        (raw(JOB | {"environment": {"\udc80": "x"}}), "body.job.environment", "lone surrogate"),
        (raw(JOB | {"cpus_per_task": 10**30}), "body.job.cpus_per_task", "less than or equal to 4096"),
        (raw(JOB).replace(b'"cpus_per_task": 1', b'"cpus_per_task": 1e999'), "body.job.cpus_per_task", "finite"),
        (raw(JOB).replace(b'"cpus_per_task": 1', b'"cpus_per_task": NaN'), "body.job.cpus_per_task", "finite"),
        (raw(JOB | {"environment": {"A": [[[[[[[[1]]]]]]]]}}), "body.job.environment.A", "valid string"),
        (b"[1, 2]", "body", "dictionary"),
        (b'"job"', "body", "dictionary"),
        (b"not json", "body.0", "JSON decode error"),
        (raw(JOB | {"na\ud800me": 1}), "body.job", "unicode"),
    ],
)
async def test_bad_bodies_are_422_naming_the_field(
    client: httpx.AsyncClient, content: bytes, field: str, says: str
) -> None:
    answer = await post(client, content)
    assert answer.status_code == 422, answer.text
    assert any(f == field or f.startswith(field + ".") for f in fields(answer)), fields(answer)
    assert says in answer.text


@pytest.mark.parametrize(
    "content",
    [
        b'{"job": "\xff\xfe"}',  # not UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # nested past the JSON parser's recursion limit
        b'{"job": {"cpus_per_task": ' + b"9" * 5000 + b'}, "script": "x"}',  # past int()'s digit limit
    ],
    ids=["invalid-utf8", "deep", "5000-digits"],
)
async def test_bodies_that_cannot_be_parsed_are_400(client: httpx.AsyncClient, content: bytes) -> None:
    answer = await post(client, content)
    assert answer.status_code == 400 and "parsing the body" in answer.json()["detail"]


async def test_a_content_length_no_int_can_hold_is_413(client: httpx.AsyncClient) -> None:
    answer = await post(client, raw(JOB), **{"Content-Length": "9" * 5000})  # int() refuses 5000 digits: was a 500
    assert answer.status_code == 413 and "over" in answer.json()["detail"]


async def test_leading_zeros_of_a_content_length_do_not_count(client: httpx.AsyncClient, bus: Bus) -> None:
    body = raw(JOB)
    answer = await post(client, body, **{"Content-Length": "0" * 30 + str(len(body))})  # was a false 413
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        ({"cursor": "9" * 30}, "query.cursor", "less than or equal"),  # was a 503: bigint out of range
        ({"cursor": "-1"}, "query.cursor", "greater than or equal"),
        ({"cursor": "\u0663"}, "query.cursor", "digits 0-9 alone"),
        ({"cursor": "1_0"}, "query.cursor", "digits 0-9 alone"),
        ({"limit": "1_0"}, "query.limit", "digits 0-9 alone"),
        ({"limit": "+5"}, "query.limit", "digits 0-9 alone"),
        ({"account": "  "}, "query.account", "empty once stripped"),
        ({"account": "a\x00b"}, "query.account", "control characters"),  # was a 503: Postgres refuses NUL
        ({"name": "\x00"}, "query.name", "control characters"),
        ({"account": "a" * 201}, "query.account", "at most 200"),
        ({"limit": "0"}, "query.limit", "greater than or equal"),
        ({"limit": "9" * 50}, "query.limit", "less than or equal"),
        ({"state": "\x00"}, "query.state", "Input should be"),
        # The last of them was taken: PENDING and RUNNING listed only the running jobs.
        ((("state", "PENDING"), ("state", "RUNNING")), "query.state", "given more than once"),
    ],
)
async def test_bad_list_filters_are_422_naming_the_parameter(
    client: httpx.AsyncClient, params: dict[str, str] | tuple[tuple[str, str], ...], field: str, says: str
) -> None:
    answer = await client.get("/jobs", params=params)
    assert answer.status_code == 422, answer.text
    assert field in fields(answer) and says in answer.text


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/query/" + "9" * 30,
        "/jobs/query/-1",
        "/jobs/query/%00",
        "/jobs/query/1e3",
        "/jobs/query/1_0",
        "/jobs/query/+2",
        "/jobs/query/2.0",
        "/jobs/query/%202",
        "/jobs/" + "9" * 400 + "/output",
        "/jobs/1/output?stream=%00",
    ],
)
async def test_bad_path_parameters_are_422(client: httpx.AsyncClient, path: str) -> None:
    answer = await client.get(path)
    assert answer.status_code == 422, answer.text
    assert fields(answer)[0] in ("path.job_id", "query.stream")


@pytest.mark.parametrize(
    "key",
    [b"a b", b"\xff\xfe", b"k\x00", b"\x1b[31m", b"k" * 256, b"\t"],
    ids=["space", "latin1", "nul", "escape", "long", "tab"],
)
async def test_odd_idempotency_keys_are_422(client: httpx.AsyncClient, key: bytes) -> None:
    answer = await client.post("/jobs/submit", json={"job": JOB, "script": "true"}, headers={b"Idempotency-Key": key})
    assert answer.status_code == 422, answer.text
    assert fields(answer) == ["header.idempotency-key"]


async def test_a_body_of_another_content_type_is_422(client: httpx.AsyncClient) -> None:
    answer = await client.post("/jobs/submit", content=raw(JOB), headers={"Content-Type": "text/plain"})
    assert answer.status_code == 422 and fields(answer) == ["body"]
    assert "script" not in answer.text  # the input is not echoed back


async def test_values_at_the_bounds_are_accepted(client: httpx.AsyncClient) -> None:
    job = JOB | {
        "time_limit": "365-0",
        "memory_per_node": "2047T",
        "ntasks_per_node": 64,
        "cpus_per_task": 64,
        "name": "n" * 200,
        "standard_output": "%x.out",
        "environment": {"_X": "é" * 1000},
    }
    answer = await post(client, raw(job), **{"Idempotency-Key": "~!" + "k" * 253})
    assert answer.status_code == 200, answer.text


async def test_a_submission_subject_holding_no_event_is_no_job(client: httpx.AsyncClient, bus: Bus) -> None:
    # Another writer's garbage on the gateway's subject (the consumers skip it): was a 500 on every read.
    ack = await bus.js.publish(subjects.SUBMITTED, b"\xff not an event", stream=subjects.STREAM)
    for answer in (
        await client.get(f"/jobs/query/{ack.seq}"),
        await client.post(f"/jobs/cancel/{ack.seq}"),
        await client.get(f"/jobs/{ack.seq}/output"),
    ):
        assert answer.status_code == 404 and f"job {ack.seq} not found" in answer.json()["detail"]


async def test_a_body_of_thousands_of_bad_entries_is_one_error(client: httpx.AsyncClient) -> None:
    unknown = b",".join(b'"k%x":0' % i for i in range(200_000))
    answer = await post(client, raw(JOB)[:-1] + b"," + unknown + b"}")
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body"] and "unknown field 'k0'" in error["msg"] and "199995 more" in error["msg"]
    names = b",".join(b'"-%x":"v"' % i for i in range(200_000))
    answer = await post(
        client, raw(JOB | {"environment": {}}).replace(b'"environment": {}', b'"environment": {' + names + b"}")
    )
    assert answer.status_code == 422, answer.text
    assert fields(answer) == ["body.job.environment.-0.[key]"]


async def test_a_write_the_log_did_not_acknowledge_in_time_may_have_been_recorded(
    client: httpx.AsyncClient, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel answered "unavailable; retry" was stored all the same once a stopped nats-server
    resumed (review of 2026-12-02): the answer says it may have been."""
    job_id = await bus.publish(submitted())

    async def silent(*_: Any, **__: Any) -> int:
        raise nats.errors.TimeoutError

    monkeypatch.setattr(Bus, "publish", silent)
    monkeypatch.setattr(Bus, "publish_acked", silent)
    for answer in (await client.post(f"/jobs/cancel/{job_id}"), await post(client, raw(JOB))):
        assert answer.status_code == 503, answer.text
        assert "may have been recorded" in answer.json()["detail"] and "Look before you retry" in answer.text


@pytest.fixture
def frozen_database() -> Iterator[str]:
    """A PostgreSQL that takes connections and never answers, as one stopped (SIGSTOP) or hung does."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(64)  # connections wait in the kernel's backlog: nothing accepts them
        yield f"postgresql+asyncpg://conductor@127.0.0.1:{listening.getsockname()[1]}/conductor"


async def test_a_look_up_that_fails_before_a_write_says_nothing_was_recorded(
    bus: Bus, nats_url: str, frozen_database: str
) -> None:
    """With PostgreSQL frozen, a cancel answered that the job log may have recorded it: nothing had
    been asked of the log (review of 2026-12-02), and a client went looking for a cancel that was
    never published."""
    job_id = await bus.publish(submitted())
    settings = GatewaySettings(nats_url=nats_url, database_url=frozen_database, database_timeout_s=0.5)
    async with gateway(settings) as client:
        for answer in (
            await client.post(f"/jobs/cancel/{job_id}"),
            await client.post("/nodes/n1/drain"),
            await client.post("/nodes/n1/resume"),
            await post(client, raw(JOB | {"dependency": f"afterok:{job_id}"})),  # its parent looked up first
        ):
            assert answer.status_code == 503, answer.text
            assert "nothing was recorded" in answer.json()["detail"], answer.text
    with pytest.raises(NotFoundError):
        await bus.js.get_msg(subjects.STREAM, subject=subjects.cancel_of(job_id), next=True, seq=1)
    with pytest.raises(NotFoundError):  # the submit with a dependency published nothing either
        await bus.js.get_msg(subjects.STREAM, subject=subjects.SUBMITTED, next=True, seq=job_id + 1)
    for subject in (
        subjects.subject_for(ev.NodeDrainRequested(node="n1")),
        subjects.subject_for(ev.NodeResumeRequested(node="n1")),
    ):
        with pytest.raises(NotFoundError):
            await bus.js.get_msg(subjects.STREAM, subject=subject, next=True, seq=1)


async def test_prometheus_name_filter_may_be_repeated(client: httpx.AsyncClient) -> None:
    # Its own filter, repeated by design: the rule against parameters given twice made it a 422.
    answer = await client.get("/metrics", params=(("name[]", "conductor_http_requests"), ("name[]", "x")))
    assert answer.status_code == 200, answer.text
