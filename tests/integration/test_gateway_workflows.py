"""Users, workflows and dependencies over HTTP, on real NATS and PostgreSQL (gateway in-process)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from nats.errors import MaxPayloadError
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import api_workflows as wf
from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_gateway.settings import GatewaySettings
from conductor_platform.bus import BatchRefused, Bus
from tests.integration.helpers import eventually, read_log
from tests.integration.test_gateway import JOB, body, gateway, projector
from tests.unit.scheduling import submitted

__all__ = ["projector"]  # a fixture, used by name

SEED_WORKFLOW_JOBS = [
    {"name": "Job1: 切片任务", "job_type": "tiling", "branch_id": "main", "parent_indices": []},
    {"name": "Job2: 推理任务", "job_type": "inference", "branch_id": "main", "parent_indices": [0]},
    {"name": "Job3: 后处理任务", "job_type": "postprocessing", "branch_id": "main", "parent_indices": [1]},
]


@pytest.fixture
async def client(bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(GatewaySettings(nats_url=nats_url, database_url=database_url, max_script_bytes=1000)) as client:
        yield client


async def _user(client: httpx.AsyncClient, name: str = "test_user") -> str:
    answer = await client.post("/users/", json={"username": name})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


async def test_seed_user_then_workflow_reads_its_own_writes(client: httpx.AsyncClient, bus: Bus) -> None:
    answer = await client.post("/users/", json={"username": "test_user"})
    assert answer.status_code == 200
    user = answer.json()
    assert set(user) == {"id", "username", "created_at"} and uuid.UUID(user["id"])
    # No projector runs: the user is found in the log.
    assert (await client.get(f"/users/{user['id']}")).json()["username"] == "test_user"
    created = await client.post("/workflows/", json={"user_id": user["id"], "jobs": SEED_WORKFLOW_JOBS})
    assert created.status_code == 200, created.text
    workflow = created.json()
    assert workflow["job_count"] == 3 and uuid.UUID(workflow["workflow_id"])
    ids = [int(j) for j in workflow["job_ids"]]
    assert ids == list(range(ids[0], ids[0] + 3))
    log = await read_log(bus)
    by_seq = {seq: event for seq, _, event in log}
    assert isinstance(by_seq[ids[0] - 1], ev.WorkflowSubmitted)
    jobs = [by_seq[j] for j in ids]
    assert all(isinstance(j, ev.JobSubmitted) and j.noop and j.account == "test_user" for j in jobs)
    view = (await client.get(f"/workflows/{workflow['workflow_id']}")).json()
    assert view["state"] == "PENDING" and view["owner"] == "test_user"
    assert [j["parents"] for j in view["jobs"]] == [[], [str(ids[0])], [str(ids[1])]]
    assert [j["parent_indices"] for j in view["jobs"]] == [[], [0], [1]]
    assert view["jobs"][1]["reason"] == "Dependency"
    job = (await client.get(f"/jobs/query/{ids[2]}")).json()
    assert job["workflow_id"] == workflow["workflow_id"] and job["job_type"] == "postprocessing"


async def test_a_second_user_of_the_same_name_is_409_even_at_once(client: httpx.AsyncClient) -> None:
    answers = await asyncio.gather(*(client.post("/users/", json={"username": "alice"}) for _ in range(8)))
    assert sorted(a.status_code for a in answers) == [200] + [409] * 7
    # The same name composed or decomposed is one name.
    assert (await client.post("/users/", json={"username": "jos\u00e9"})).status_code == 200
    assert (await client.post("/users/", json={"username": "jose\u0301"})).status_code == 409


@pytest.mark.parametrize(
    "username",
    [
        '""',
        '"   "',
        f'"{"x" * 65}"',
        '"tab\\there"',
        '"nul\\u0000"',
        '"a/b"',
        '"\\ud800"',
        "12",
        "null",
        '"' + "\\u0344" * 64 + '"',
    ],
)
async def test_invalid_usernames_are_422(client: httpx.AsyncClient, username: str) -> None:
    answer = await client.post(
        "/users/", content=f'{{"username": {username}}}', headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422 and answer.json()["detail"]


@pytest.mark.parametrize(
    ("jobs", "says"),
    [
        ([{"name": "a", "parent_indices": [0]}], "job 0 lists itself"),
        ([{"name": "a"}, {"name": "b", "parent_indices": [2]}, {"name": "c"}], "job 1: parent index 2 is a later job"),
        ([{"name": "a"}, {"name": "b", "parent_indices": [7]}], "job 1: parent index 7 is no job of the list"),
        ([{"name": "a"}, {"name": "b", "parent_indices": [0, 0]}], "job 1: parent index 0 is listed twice"),
        ([{"name": "a", "parent_indices": [-1]}], "greater than or equal to 0"),
        # Not index 1 (JSON's true as an int): a boolean is no index at all.
        ([{"name": "a"}, {"name": "b", "parent_indices": [True]}], "valid integer"),
        ([], "at least 1"),
        ([{"name": "a"}] * 1000, "at most 999"),
        ([{"name": "a"}, {"name": "b", "memory_per_node": "8X", "script": "true"}], "job 1: memory_per_node"),
        ([{"name": "a", "script": "   "}], "job 0: script is empty"),
        ([{"name": "a", "script": "true"}, {"name": "b", "script": "echo\r\ntrue"}], "job 1: script contains DOS"),
        # As the README says: not just "unknown field" (the parents are its dependency).
        ([{"name": "a", "dependency": "afterok:1"}], "parent_indices) are its dependency"),
    ],
)
async def test_bad_workflows_are_422_naming_the_job(client: httpx.AsyncClient, jobs: list[Any], says: str) -> None:
    user = await _user(client)
    answer = await client.post("/workflows/", json={"user_id": user, "jobs": jobs})
    assert answer.status_code == 422, answer.text
    assert says in answer.text


async def test_workflow_of_an_unknown_user_is_404_and_publishes_nothing(client: httpx.AsyncClient, bus: Bus) -> None:
    answer = await client.post("/workflows/", json={"user_id": str(uuid.uuid4()), "jobs": SEED_WORKFLOW_JOBS})
    assert answer.status_code == 404 and "user" in answer.text
    assert (await client.get(f"/users/{uuid.uuid4()}")).status_code == 404
    assert (await client.get(f"/workflows/{uuid.uuid4()}")).status_code == 404
    assert (await client.get("/workflows/not-a-uuid")).status_code == 422
    assert await read_log(bus) == []


@pytest.mark.parametrize("cursor", ["1_0", "+5", "2.0"])
async def test_a_workflow_cursor_is_digits_alone(client: httpx.AsyncClient, cursor: str) -> None:
    # As every other number of a URL: parsed as a Python int, 1_0 was the cursor 10.
    answer = await client.get("/workflows", params={"cursor": cursor})
    assert answer.status_code == 422 and "digits 0-9 alone" in answer.text


async def test_oversized_workflow_script_is_413(client: httpx.AsyncClient) -> None:
    user = await _user(client)
    answer = await client.post("/workflows/", json={"user_id": user, "jobs": [{"name": "a", "script": "x" * 1001}]})
    assert answer.status_code == 413 and "job 0" in answer.text


async def test_a_workflow_job_may_ask_to_be_requeued(client: httpx.AsyncClient, bus: Bus) -> None:
    user = await _user(client)
    jobs = [{"name": "a", "script": "true", "requeue": True}, {"name": "b", "script": "true", "parent_indices": [0]}]
    answer = await client.post("/workflows/", json={"user_id": user, "jobs": jobs})
    assert answer.status_code == 200, answer.text
    stored = [e for _, _, e in await read_log(bus) if isinstance(e, ev.JobSubmitted)]
    assert [(e.name, e.requeue) for e in stored] == [("a", True), ("b", False)]


async def test_a_job_over_one_message_is_413_naming_it(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str
) -> None:
    # Within max_script_bytes, over the stream's 1 MiB message once JSON writes each control
    # character in 6 bytes; the workflow as a whole is far under its 16 MiB.
    settings = GatewaySettings(nats_url=nats_url, database_url=database_url, max_script_bytes=900 * 1024)
    async with gateway(settings) as client:
        user = await _user(client)
        jobs = [{"name": "a", "script": "true"}, {"name": "b", "script": "\x01" * 200_000}]
        answer = await client.post("/workflows/", json={"user_id": user, "jobs": jobs})
    assert answer.status_code == 413, answer.text
    assert "job 1 is over the size limit of one message" in answer.json()["detail"]
    assert [type(e) for _, _, e in await read_log(bus)] == [ev.UserCreated]  # nothing of the workflow


async def test_the_largest_workflow_is_one_batch(client: httpx.AsyncClient, bus: Bus) -> None:
    user = await _user(client)
    jobs: list[dict[str, Any]] = [{"name": "source", "script": "true"}]
    jobs += [{"name": f"f{i}", "parent_indices": [0]} for i in range(1, 998)]
    jobs.append({"name": "sink", "parent_indices": list(range(1, 998))})
    answer = await client.post("/workflows/", json={"user_id": user, "jobs": jobs})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["job_ids"]) == 999
    info = await bus.js.stream_info(bus.stream)
    assert info.state.last_seq == int(answer.json()["job_ids"][-1])


async def test_dependency_on_unknown_job_is_422_and_known_is_accepted(client: httpx.AsyncClient, bus: Bus) -> None:
    first = (await client.post("/jobs/submit", json=body())).json()["job_id"]
    answer = await client.post("/jobs/submit", json=body(dependency=f"afterok:{first}:99999"))
    assert answer.status_code == 422 and "no job 99999" in answer.text
    bad = await client.post("/jobs/submit", json=body(dependency="afterok:1+5"))
    assert bad.status_code == 422 and "not supported" in bad.text
    ok = await client.post("/jobs/submit", json=body(dependency=f"afterok:{first}?singleton"))
    assert ok.status_code == 200
    job = (await client.get(f"/jobs/query/{ok.json()['job_id']}")).json()
    assert job["dependency"] == f"afterok:{first}?singleton" and job["reason"] == "Dependency"
    assert JOB["name"] == job["name"]


async def test_projected_workflow_and_cancel(
    client: httpx.AsyncClient, bus: Bus, projector: None, engine: AsyncEngine
) -> None:
    user = await _user(client, "bob")
    created = (await client.post("/workflows/", json={"user_id": user, "jobs": SEED_WORKFLOW_JOBS})).json()

    async def projected() -> dict[str, Any] | None:
        listed = (await client.get("/workflows", params={"user_id": user})).json()["workflows"]
        return listed[0] if listed else None

    summary = await eventually(projected, what="the workflow in the read model")
    assert summary["workflow_id"] == created["workflow_id"] and summary["owner"] == "bob"
    newer = (await client.post("/workflows/", json={"user_id": user, "jobs": SEED_WORKFLOW_JOBS})).json()

    async def both_projected() -> dict[str, Any] | None:
        page = dict((await client.get("/workflows", params={"user_id": user, "limit": 1})).json())
        return page if page["next_cursor"] and page["workflows"][0]["workflow_id"] == newer["workflow_id"] else None

    first_page = await eventually(both_projected, what="the second workflow in the read model")
    second_page = (
        await client.get("/workflows", params={"user_id": user, "limit": 1, "cursor": first_page["next_cursor"]})
    ).json()
    assert [w["workflow_id"] for w in second_page["workflows"]] == [created["workflow_id"]]
    users = (await client.get("/users")).json()["users"]
    assert [u["username"] for u in users] == ["bob"]
    cancelled = (await client.post(f"/workflows/{created['workflow_id']}/cancel")).json()
    assert cancelled["cancel_requested"] == created["job_ids"]
    log = await read_log(bus)
    asked = [e.job_id for _, _, e in log if isinstance(e, ev.JobCancelRequested)]
    assert asked == [int(j) for j in created["job_ids"]]


async def test_users_are_listed_page_by_page(client: httpx.AsyncClient, projector: None) -> None:
    names = [f"user{i}" for i in range(5)]
    for name in names:
        await _user(client, name)

    async def all_projected() -> bool:
        return len((await client.get("/users")).json()["users"]) == len(names)

    await eventually(all_projected, what="every user in the read model")
    seen, cursor = [], None
    for _ in range(3):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/users", params=params)).json()
        seen += [u["username"] for u in page["users"]]
        cursor = page["next_cursor"]
    assert seen == names and cursor is None
    unknown = await client.get("/users", params={"cursor": str(uuid.uuid4())})
    assert unknown.status_code == 422 and "no user's" in unknown.text


async def test_a_batch_cut_short_or_refused_stores_nothing_of_it(bus: Bus) -> None:
    """A workflow is one atomic batch: a publish that fails halfway (a message the connection will
    not send) or a batch the stream refuses (here, a message id it has seen) leaves nothing of it."""
    workflow = str(uuid.uuid4())

    def batch(**middle: Any) -> list[ev.Event]:
        return [
            ev.WorkflowSubmitted(workflow_id=workflow, user_id=str(uuid.uuid4()), owner="u", job_count=3),
            submitted(workflow_id=workflow, workflow_index=0),
            submitted(workflow_id=workflow, workflow_index=1, **middle),
            submitted(workflow_id=workflow, workflow_index=2),
        ]

    with pytest.raises(MaxPayloadError):  # the third message: two were sent, never committed
        await bus.publish_batch(batch(environment={"BIG": "x" * 1_100_000}))
    first = await bus.publish(submitted(), msg_id="seen")
    with pytest.raises(BatchRefused, match="duplicate message id"):
        await bus.publish_batch(batch(), headers={"Nats-Msg-Id": "seen"})
    await bus.publish(submitted())  # the stream goes on: the uncommitted batch never lands in it
    await asyncio.sleep(0.5)
    assert [seq for seq, _, _ in await read_log(bus)] == [first, first + 1]


async def test_a_workflow_retried_with_its_idempotency_key_is_one_workflow(client: httpx.AsyncClient, bus: Bus) -> None:
    """A submit that timed out (a 503 "may have been recorded", NATS slow) and was retried made a second
    workflow, every job of it run twice (chaos review of 2026-12-02: NATS frozen 40 s)."""
    user = await _user(client)
    request = {"user_id": user, "name": "retried", "jobs": SEED_WORKFLOW_JOBS}
    key = {"Idempotency-Key": "wf-7f3a"}
    # Eight at once, as impatient retries through several gateways: the stream keeps one.
    answers = await asyncio.gather(*(client.post("/workflows/", json=request, headers=key) for _ in range(8)))
    assert {a.status_code for a in answers} == {200}, [a.text for a in answers]
    assert len({json.dumps(a.json(), sort_keys=True) for a in answers}) == 1
    first = answers[0].json()
    # The same request written otherwise (key order) is the same request.
    reordered = {"jobs": SEED_WORKFLOW_JOBS, "name": "retried", "user_id": user}
    again = await client.post("/workflows/", json=reordered, headers=key)
    assert again.status_code == 200 and again.json() == first
    stored = [e for _, _, e in await read_log(bus)]
    assert sum(isinstance(e, ev.WorkflowSubmitted) for e in stored) == 1
    assert sum(isinstance(e, ev.JobSubmitted) for e in stored) == len(SEED_WORKFLOW_JOBS)
    assert [int(j) for j in first["job_ids"]] == [
        seq
        for seq, _, e in await read_log(bus)
        if isinstance(e, ev.JobSubmitted) and e.workflow_id == first["workflow_id"]
    ]

    other = await client.post("/workflows/", json=request | {"name": "another"}, headers=key)
    assert other.status_code == 422 and "already used for another workflow" in other.json()["detail"], other.text
    # Keys are each user's own; without a key, each submit is a workflow.
    elsewhere = await client.post("/workflows/", json=request | {"user_id": await _user(client, "bob")}, headers=key)
    assert elsewhere.status_code == 200 and elsewhere.json()["workflow_id"] != first["workflow_id"]
    plain = [await client.post("/workflows/", json=request) for _ in range(2)]
    assert plain[0].json()["workflow_id"] != plain[1].json()["workflow_id"]
    twice = await client.post("/workflows/", json=request, headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "b")])
    assert twice.status_code == 422 and "more than once" in twice.json()["detail"]


async def test_a_key_whose_workflow_left_the_log_is_a_422_not_a_second_workflow(
    client: httpx.AsyncClient, bus: Bus, projector: None
) -> None:
    """After ``conductor compact`` removed an idempotent workflow, its subject was empty again: a retry
    stored a second set of jobs under the same workflow id, and they ran (review of 2026-12-02)."""
    user = await _user(client)
    request = {"user_id": user, "jobs": SEED_WORKFLOW_JOBS}
    key = {"Idempotency-Key": "compacted"}
    first = (await client.post("/workflows/", json=request, headers=key)).json()

    async def projected() -> bool:  # the list is the read models' alone (a view falls back on the log)
        listed = (await client.get("/workflows", params={"user_id": user})).json()["workflows"]
        return [w["workflow_id"] for w in listed] == [first["workflow_id"]]

    await eventually(projected, what="the workflow in the read models")
    # What compaction does to it: its messages leave the log, its rows stay.
    await bus.js.purge_stream(bus.stream, subject=subjects.workflow_subject(first["workflow_id"]))
    await bus.js.purge_stream(bus.stream, subject=subjects.SUBMITTED)
    again = await client.post("/workflows/", json=request, headers=key)
    assert again.status_code == 422 and "no longer in the log" in again.json()["detail"], again.text
    for subject in (subjects.SUBMITTED, subjects.workflow_subject(first["workflow_id"])):  # nothing stored again
        with pytest.raises(NotFoundError):
            await bus.js.get_last_msg(bus.stream, subject)


async def test_a_keyed_workflows_subject_holding_another_writers_bytes_is_a_422(
    client: httpx.AsyncClient, bus: Bus
) -> None:
    user = await _user(client)
    workflow_id = wf.workflow_id_of(user, "taken")
    await bus.js.publish(subjects.workflow_subject(workflow_id), b"\xff not an event", stream=bus.stream)
    answer = await client.post(
        "/workflows/", json={"user_id": user, "jobs": SEED_WORKFLOW_JOBS}, headers={"Idempotency-Key": "taken"}
    )
    assert answer.status_code == 422 and "already used for another workflow" in answer.json()["detail"], answer.text
