"""The public subjects on a real JetStream: filter by type, account, workflow and job with wildcards;
each event once, also across a restart of the republisher."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from conductor_contracts import events as ev
from conductor_contracts import public
from conductor_platform.bus import Bus
from conductor_platform.retry import Backoff
from conductor_projector import republish
from tests.integration.helpers import eventually
from tests.unit.scheduling import node, submitted


@contextlib.asynccontextmanager
async def republishing(bus: Bus) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(republish.run(bus, stop, Backoff(0.05, 0.2), retention_s=3600))
    try:
        yield
    finally:
        stop.set()
        await task


async def _matching(bus: Bus, filter_subject: str) -> list[tuple[str, int]]:
    """(type, log sequence) of the public messages on ``filter_subject``, in order."""
    info = await bus.js.stream_info(public.STREAM, subjects_filter=filter_subject)
    count = sum((info.state.subjects or {}).values())
    if not count:
        return []
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, filter_subject=filter_subject)
    sub = await bus.js.subscribe(filter_subject, stream=public.STREAM, ordered_consumer=True, config=config)
    out: list[tuple[str, int]] = []
    try:
        for _ in range(count):
            msg = await sub.next_msg(timeout=5)
            out.append((ev.decode(msg.data).type, int((msg.headers or {})[public.SEQ_HEADER])))
    finally:
        await sub.unsubscribe()
    return out


async def test_filters_by_type_account_workflow_and_job_and_publishes_each_event_once(bus: Bus) -> None:
    async with republishing(bus):
        alice = await bus.publish(submitted(name="a", account="alice"))
        dotted = await bus.publish(submitted(name="b", account="a.b c"))
        await bus.publish(node("n1", 4))
        await bus.publish(ev.JobPlaced(job_id=alice, node="n1", cores=(0,), memory_mb=100), by_scheduler=True)
        await bus.publish(ev.JobCompleted(job_id=alice, node="n1"))
        await bus.publish(ev.JobCompleted(job_id=dotted, node="n1"))
        workflow = str(uuid.uuid4())
        last = await bus.publish_batch(
            [
                ev.WorkflowSubmitted(workflow_id=workflow, user_id=str(uuid.uuid4()), owner="alice", job_count=2),
                submitted(account="alice", workflow_id=workflow, workflow_index=0),
                submitted(account="alice", workflow_id=workflow, workflow_index=1, parent_indices=(0,)),
            ]
        )

        async def all_published() -> bool:
            with contextlib.suppress(NotFoundError):  # not created yet
                return (await bus.js.stream_info(public.STREAM)).state.messages == last
            return False

        await eventually(all_published, what="every event published again")

    assert await _matching(bus, "conductor-public.job.*.alice.-.*") == [
        ("JobSubmitted", alice),
        ("JobPlaced", alice + 3),
        ("JobCompleted", alice + 4),
    ]
    assert [t for t, _ in await _matching(bus, f"conductor-public.job.*.{public.token('a.b c')}.>")] == [
        "JobSubmitted",
        "JobCompleted",
    ]
    assert await _matching(bus, f"conductor-public.job.*.*.{workflow}.*") == [
        ("JobSubmitted", last - 1),
        ("JobSubmitted", last),
    ]
    assert [s for _, s in await _matching(bus, "conductor-public.job.JobCompleted.>")] == [alice + 4, alice + 5]
    assert [t for t, _ in await _matching(bus, f"conductor-public.job.*.*.*.{alice}")] == [
        "JobSubmitted",
        "JobPlaced",
        "JobCompleted",
    ]
    assert await _matching(bus, "conductor-public.node.NodeRegistered.n1") == [("NodeRegistered", alice + 2)]
    assert [t for t, _ in await _matching(bus, "conductor-public.workflow.>")] == ["WorkflowSubmitted"]

    # Started again (a restart of the projector): it goes on from what is stored, nothing twice.
    async with republishing(bus):
        more = await bus.publish(submitted(account="alice"))

        async def caught_up() -> bool:
            return (await bus.js.stream_info(public.STREAM)).state.messages == more

        await eventually(caught_up, what="the new event published, and only it")
    assert await republish.published_up_to(bus) == more


async def test_a_public_stream_deleted_while_publishing_is_made_again_with_every_event(bus: Bus) -> None:
    async with republishing(bus):
        first = await bus.publish(submitted(account="alice"))

        async def holds(seq: int) -> bool:
            with contextlib.suppress(NotFoundError):  # not made (again) yet
                return (await bus.js.stream_info(public.STREAM)).state.messages == seq
            return False

        await eventually(lambda: holds(first), what="the first event published")
        await bus.js.delete_stream(public.STREAM)  # by hand, say: what was published after went nowhere
        last = first
        for _ in range(5):
            last = await bus.publish(submitted(account="alice"))
            await asyncio.sleep(0.1)
        await eventually(lambda: holds(last), what="the stream made again, with every event of the log")
    assert [s for _, s in await _matching(bus, "conductor-public.job.JobSubmitted.>")] == list(range(first, last + 1))
