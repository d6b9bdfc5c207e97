"""GET /events over real HTTP on a real NATS: filters, resume, heartbeats, a slow client, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from conductor_contracts import events as ev
from conductor_contracts import public, subjects
from conductor_contracts.catalogue import EVENT_TYPES, subject_patterns
from conductor_gateway.settings import GatewaySettings
from conductor_platform.bus import Bus
from tests.integration.helpers import eventually
from tests.integration.served import Sse, messages, served_gateway, take
from tests.unit.scheduling import node, submitted


@contextlib.asynccontextmanager
async def gateway(nats_url: str, database_url: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        served_gateway(GatewaySettings(nats_url=nats_url, database_url=database_url, **settings)) as url,
        httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(20, read=None)) as client,
    ):
        yield client


@pytest.fixture
async def client(bus: Bus, nats_url: str, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway(nats_url, database_url) as client:
        yield client


async def submit(bus: Bus, account: str, script: str = "true") -> int:
    return await bus.publish(submitted().model_copy(update={"account": account, "script": script}))


async def run_job(bus: Bus, job_id: int) -> None:
    await bus.publish(ev.JobPlaced(job_id=job_id, node="n1", cores=(0,), memory_mb=100))
    await bus.publish(ev.JobStarted(job_id=job_id, node="n1", pid=42))
    await bus.publish(ev.JobCompleted(job_id=job_id, node="n1"))


async def consumers(bus: Bus) -> int:
    return int((await bus.js.stream_info(subjects.STREAM)).state.consumer_count)


async def no_consumer_left(bus: Bus) -> None:
    await eventually(lambda: _zero(bus), 10, "every feed consumer deleted")


async def _zero(bus: Bus) -> bool:
    return await consumers(bus) == 0


@contextlib.asynccontextmanager
async def feed(client: httpx.AsyncClient, query: str = "", **headers: str) -> AsyncIterator[AsyncIterator[Sse]]:
    async with client.stream("GET", f"/events{query}", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield messages(response)


async def test_events_carry_their_sequence_type_job_and_account(client: httpx.AsyncClient, bus: Bus) -> None:
    await bus.publish(node("n1", 2))
    job = await submit(bus, "ann")
    await run_job(bus, job)
    async with feed(client, "?since=0") as stream:
        got = await take(stream, 5)
    assert [(m.id, m.event) for m in got] == [
        (1, "NodeRegistered"),
        (job, "JobSubmitted"),
        (job + 1, "JobPlaced"),
        (job + 2, "JobStarted"),
        (job + 3, "JobCompleted"),
    ]
    assert got[0].data is not None and "job_id" not in got[0].data and got[0].data["node"] == "n1"
    for message in got[1:]:
        assert message.data is not None
        assert (message.data["job_id"], message.data["account"], message.data["type"]) == (job, "ann", message.event)
    assert got[1].data is not None and got[1].data["script"] == "true"


async def test_filters_by_job_account_and_type(client: httpx.AsyncClient, bus: Bus) -> None:
    ann, bob = await submit(bus, "ann"), await submit(bus, "bob")
    await run_job(bus, bob)
    await run_job(bus, ann)
    # Started after the submissions: the accounts come from the log (get_msg), not from events seen.
    last = int((await bus.js.stream_info(subjects.STREAM)).state.last_seq)
    async with feed(client, "?since=0&account=ann") as stream:
        assert [(m.event, m.data and m.data["job_id"]) for m in await take(stream, 4)] == [
            ("JobSubmitted", ann),
            ("JobPlaced", ann),
            ("JobStarted", ann),
            ("JobCompleted", ann),
        ]
    async with feed(client, f"?since={bob}&account=bob&type=JobCompleted,JobPlaced") as stream:
        assert [(m.event, m.id) for m in await take(stream, 2)] == [("JobPlaced", bob + 1), ("JobCompleted", bob + 3)]
    async with feed(client, f"?since=0&job_id={ann}&type=JobStarted&type=JobSubmitted") as stream:
        assert [(m.event, m.id) for m in await take(stream, 2)] == [("JobSubmitted", ann), ("JobStarted", last - 1)]
    # Nothing else matches: the next event of the feed is one published after.
    async with feed(client, "?since=0&account=nobody") as stream:
        carl = await submit(bus, "nobody")
        assert [(m.event, m.id) for m in await take(stream, 1)] == [("JobSubmitted", carl)]


async def test_filters_by_workflow(client: httpx.AsyncClient, bus: Bus) -> None:
    flow, other = str(uuid.uuid4()), str(uuid.uuid4())
    user = str(uuid.uuid4())
    started = await bus.publish(ev.WorkflowSubmitted(workflow_id=flow, user_id=user, owner="ann", job_count=1))
    await bus.publish(ev.WorkflowSubmitted(workflow_id=other, user_id=user, owner="ann", job_count=1))
    job = await bus.publish(submitted().model_copy(update={"workflow_id": flow, "workflow_index": 0}))
    await bus.publish(submitted().model_copy(update={"workflow_id": other, "workflow_index": 0}))
    await bus.publish(ev.JobCompleted(job_id=job))
    async with feed(client, f"?since=0&workflow_id={flow}") as stream:
        got = await take(stream, 3)
    assert [(m.event, m.id) for m in got] == [
        ("WorkflowSubmitted", started),
        ("JobSubmitted", job),
        ("JobCompleted", job + 2),
    ]
    assert all(m.data is not None and m.data["workflow_id"] == flow for m in got)


async def test_without_a_position_the_feed_starts_from_now(client: httpx.AsyncClient, bus: Bus) -> None:
    await submit(bus, "ann")
    async with feed(client) as stream:
        later = await submit(bus, "ann")
        assert [m.id for m in await take(stream, 1)] == [later]


async def test_resume_with_last_event_id_loses_and_repeats_nothing(client: httpx.AsyncClient, bus: Bus) -> None:
    async with feed(client, "?type=JobSubmitted") as stream:
        first = [await submit(bus, "ann") for _ in range(3)]
        got = await take(stream, 3)
    assert [m.id for m in got] == first
    await no_consumer_left(bus)
    # Published while the client is away, among events it does not want.
    missed = []
    for _ in range(5):
        missed.append(await submit(bus, "ann"))
        await run_job(bus, missed[-1])
    # An EventSource sends the last id it was given; it wins over the since= of the URL it reconnects to.
    async with feed(client, "?type=JobSubmitted&since=0", **{"Last-Event-ID": str(got[-1].id)}) as stream:
        again = await take(stream, 5)
        after = await submit(bus, "ann")
        assert [m.id for m in await take(stream, 1)] == [after]
    assert [m.id for m in again] == missed
    await no_consumer_left(bus)


async def test_since_starts_after_that_sequence(client: httpx.AsyncClient, bus: Bus) -> None:
    ids = [await submit(bus, "ann") for _ in range(4)]
    async with feed(client, f"?since={ids[1]}") as stream:
        assert [m.id for m in await take(stream, 2)] == ids[2:]


async def test_an_idle_stream_gets_keepalive_comments(bus: Bus, nats_url: str, database_url: str) -> None:
    async with gateway(nats_url, database_url, events_heartbeat_s=0.2) as client, feed(client) as stream:
        comments = []
        async for message in stream:
            comments.append(message.comment)
            if len(comments) == 3:
                break
    assert comments == ["keepalive"] * 3


async def test_a_filtered_feed_moves_its_id_past_what_it_skips_and_resumes_from_there(
    bus: Bus, nats_url: str, database_url: str
) -> None:
    async with gateway(nats_url, database_url, events_heartbeat_s=0.2) as client:
        async with feed(client, "?account=ann") as stream:
            skipped = [await submit(bus, "bob") for _ in range(3)]
            await run_job(bus, skipped[-1])
            last = int((await bus.js.stream_info(subjects.STREAM)).state.last_seq)
            markers = await asyncio.wait_for(_ids_up_to(stream, last), 20)
        # What the client's EventSource keeps as its Last-Event-ID: nothing was dispatched to it.
        assert all((m.event, m.data) == (None, None) for m in markers)
        ann = await submit(bus, "ann")
        async with feed(client, "?account=ann", **{"Last-Event-ID": str(last)}) as stream:
            assert [(m.event, m.id) for m in await take(stream, 1)] == [("JobSubmitted", ann)]


async def _ids_up_to(stream: AsyncIterator[Sse], last: int) -> list[Sse]:
    """The messages with an id, up to the one with ``last``."""
    got: list[Sse] = []
    async for message in stream:
        if message.id is not None:
            got.append(message)
            if message.id >= last:
                assert message.id == last
                return got
    raise AssertionError("the feed ended")


async def test_a_client_too_slow_is_told_then_resumes_without_loss(
    bus: Bus, nats_url: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conductor.gateway.feed")
    # Events of 64 KB: what the kernel's socket buffers hold of them is soon full.
    script = "#" * 64 * 1024
    count = 400
    async with gateway(nats_url, database_url, events_buffer=2, events_stall_s=0.5) as client:
        async with feed(client) as stream:
            published = [await submit(bus, "ann", script) for _ in range(count)]
            # The client reads nothing for a while: its buffer in the gateway stays full.
            await eventually(lambda: _gave_up(caplog), 30, "the gateway gave up on the client")
            got = await asyncio.wait_for(_all(stream), 30)
        assert got[-1].event == "overflow" and got[-1].data is not None
        delivered = [m.id for m in got[:-1]]
        assert delivered == published[: len(delivered)] and len(delivered) < count
        assert got[-1].data["last_event_id"] == delivered[-1]
        await no_consumer_left(bus)
        async with feed(client, **{"Last-Event-ID": str(delivered[-1])}) as stream:
            rest = await take(stream, count - len(delivered), timeout=60)
        assert [m.id for m in rest] == published[len(delivered) :]
    await no_consumer_left(bus)


async def _gave_up(caplog: pytest.LogCaptureFixture) -> bool:
    return any("too slow" in record.getMessage() for record in caplog.records)


async def _all(stream: AsyncIterator[Sse]) -> list[Sse]:
    return [message async for message in stream]


@pytest.mark.parametrize(
    ("query", "headers", "says"),
    [
        ("?type=JobDone", {}, "unknown event type 'JobDone'"),
        # Named up to five: 3,000 unknown names made a 32 KB answer.
        ("?type=" + ",".join(f"T{i:04}" for i in range(3000)), {}, "'T0004' and 2995 more; known"),
        ("?type=JobCompleted,Nope", {}, "'Nope'"),
        ("?job_id=abc", {}, "digits 0-9 alone"),
        ("?job_id=0", {}, "greater than or equal to 1"),
        ("?since=-1", {}, "greater than or equal to 0"),
        ("?since=99999999999999999999999", {}, "less than or equal to"),
        ("", {"Last-Event-ID": "abc"}, "digits 0-9 alone"),
        ("?since=1_000", {}, "digits 0-9 alone"),
        ("?account=" + "x" * 201, {}, "at most 200 characters"),
        # As /jobs refuses them: no job has such an account or workflow (accepted, it matched nothing).
        ("?account=%00", {}, "control characters"),
        ("?workflow_id=%20%20", {}, "empty once stripped"),
        ("?account=a&account=b", {}, "given more than once"),
    ],
)
async def test_bad_parameters_are_a_422_with_a_message(
    client: httpx.AsyncClient, bus: Bus, query: str, headers: dict[str, str], says: str
) -> None:
    answer = await client.get(f"/events{query}", headers=headers)
    assert answer.status_code == 422
    assert says in answer.text
    assert await consumers(bus) == 0


@pytest.mark.parametrize("position", [{"since": "1000"}, {"Last-Event-ID": "1000"}])
async def test_a_position_past_the_end_of_the_log_is_a_409(
    client: httpx.AsyncClient, bus: Bus, position: dict[str, str]
) -> None:
    # A log restored or reset since the client's last id (or a typo): waiting there skipped every event
    # up to it, without a word, for ever.
    last = await submit(bus, "ann")
    query = f"?since={position['since']}" if "since" in position else ""
    headers = {k: v for k, v in position.items() if k != "since"}
    answer = await client.get(f"/events{query}", headers=headers)
    assert answer.status_code == 409 and f"its last event is {last}" in answer.json()["detail"]
    assert await consumers(bus) == 0
    async with feed(client, f"?since={last - 1}") as stream:  # at the end is fine
        (at_end,) = await take(stream, 1)
    assert at_end.id == last


async def test_asyncapi_lists_every_event_with_its_schema_and_subjects(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/asyncapi.json")).json()
    assert doc["asyncapi"].startswith("3.") and doc["x-jetstream"]["stream"] == subjects.STREAM
    schemas = doc["components"]["schemas"]
    addresses: dict[str, set[str]] = {}
    for channel in doc["channels"].values():
        for ref in channel["messages"].values():
            message = doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]
            schema = schemas[message["payload"]["$ref"].rsplit("/", 1)[1]]
            addresses.setdefault(schema["properties"]["type"]["const"], set()).add(channel["address"])
    assert addresses == {name: {*subject_patterns(cls), public.pattern(cls)} for name, cls in EVENT_TYPES.items()}
    assert doc["x-jetstream"]["public"]["stream"] == public.STREAM
    assert doc["channels"]["JobPlaced"]["parameters"] == {"node": {"description": "the node's name"}}
    assert "openapi" in (await client.get("/openapi.json")).json()


async def test_feeds_past_the_gateways_limit_are_a_503_until_one_ends(
    bus: Bus, nats_url: str, database_url: str
) -> None:
    # Each feed holds a consumer on the stream that every executor and service reads through: an
    # unbounded number of clients would take the stream's last consumers from them.
    async with gateway(nats_url, database_url, events_max_clients=2) as client:
        async with feed(client), feed(client):
            refused = await client.get("/events")
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
            assert "CONDUCTOR_EVENTS_MAX_CLIENTS" in refused.json()["detail"]
            assert await consumers(bus) == 2
        await no_consumer_left(bus)
        async with feed(client):  # the slots came back
            assert await consumers(bus) == 1


async def test_a_client_that_never_reads_gives_its_slot_and_consumer_back(
    bus: Bus, nats_url: str, database_url: str
) -> None:
    # Its overflow notice was written through the same blocked socket: the response never ended, and
    # its slot and consumer were held for as long as it stayed connected.
    for _ in range(200):  # 64 KB events: far more than the sockets' buffers hold
        await submit(bus, "ann", "#" * 64 * 1024)
    settings = {"events_buffer": 2, "events_stall_s": 0.5, "events_max_clients": 1}
    async with gateway(nats_url, database_url, **settings) as client:
        silent = socket.socket()
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            silent.connect((client.base_url.host, client.base_url.port or 80))
            silent.sendall(b"GET /events?since=0 HTTP/1.1\r\nHost: gateway\r\n\r\n")
            await eventually(lambda: _one(bus), 10, "the silent client's feed opened")

            async def slot_back() -> bool:
                async with client.stream("GET", "/events") as answer:  # its head is enough
                    return answer.status_code == 200

            await eventually(slot_back, 30, "the slot given back")
            await no_consumer_left(bus)
        finally:
            silent.close()


async def _one(bus: Bus) -> bool:
    return await consumers(bus) == 1


async def test_a_feed_whose_reader_swallows_its_cancel_still_closes_and_deletes_its_consumer(bus: Bus) -> None:
    # nats-py's fetch waits in asyncio.wait_for, which on Python 3.11 drops a cancel that comes as a
    # message arrives: one cancel left the reader fetching, the close waiting on it and the consumer
    # on the stream for ever.
    from conductor_gateway.client_feed import ClientFeed, FeedLimits
    from conductor_gateway.feed_items import FeedFilter
    from conductor_platform.jobs import JobDirectory

    limits = FeedLimits(heartbeat_s=15, buffer=8, stall_s=30)
    opened = await ClientFeed.open(bus, 1, FeedFilter(), JobDirectory(10), limits)
    swallowed = 0

    async def fetch(batch: int, timeout: float) -> list[Any]:
        nonlocal swallowed
        try:
            await asyncio.sleep(timeout)
        except asyncio.CancelledError:
            swallowed += 1  # and carries on, as the lost cancel does
        return []

    opened._sub.fetch = fetch  # type: ignore[method-assign,assignment]
    body = opened.stream()

    async def first_chunk() -> bytes:
        return await anext(body)

    first = asyncio.create_task(first_chunk())  # starts the reader
    await asyncio.sleep(0.2)
    await asyncio.wait_for(opened.close(), 10)
    assert swallowed >= 1 and await consumers(bus) == 0
    first.cancel()
    with contextlib.suppress(BaseException):
        await first
