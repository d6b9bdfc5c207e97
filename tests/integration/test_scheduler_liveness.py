"""A silent node declared lost by a real scheduler on a real JetStream: its jobs end NODE_FAIL, or are
requeued and placed elsewhere as their next run; a node that keeps its heartbeat is left alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import nats.errors
import pytest

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor import placements
from conductor_platform.bus import Bus
from conductor_scheduler import delivered
from conductor_scheduler.service import run
from conductor_scheduler.settings import SchedulerSettings
from tests.integration.helpers import eventually, read_log
from tests.unit.scheduling import node, submitted


@contextlib.asynccontextmanager
async def beating(bus: Bus, name: str) -> AsyncIterator[None]:
    """Writes the node's heartbeat every 0.2 s while inside."""
    kv = await bus.heartbeats()
    done = asyncio.Event()

    async def beat() -> None:
        # Ended by ``done``, not by the cancel alone: on Python 3.11 a cancel that lands as a put's
        # answer arrives is lost inside asyncio.wait_for (nats-py's request), and the loop went on.
        while not done.is_set():
            await kv.put(subjects.heartbeat_key(name), b"{}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.2)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        done.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_silent_node_is_lost_and_its_jobs_failed_or_requeued(bus: Bus, nats_url: str) -> None:
    settings = SchedulerSettings(nats_url=nats_url, node_lost_after_s=1.5, use_lease=False)
    stop = asyncio.Event()
    scheduler = asyncio.create_task(run(settings, stop))
    try:
        async with beating(bus, "keeps"):
            await bus.publish(node("dies", 2, 4000))
            plain = await bus.publish(submitted())
            again = await bus.publish(submitted(requeue=True))

            async def placed_on_dies() -> bool:
                log = await read_log(bus)
                return {e.job_id for _, _, e in log if isinstance(e, ev.JobPlaced) and e.node == "dies"} == {
                    plain,
                    again,
                }

            await eventually(placed_on_dies, what="both jobs placed on the node that will die")
            await bus.publish(node("keeps", 1, 4000))

            async def requeued_and_placed_again() -> list[ev.Event] | None:
                log = [e for _, _, e in await read_log(bus)]
                again_placed = [e for e in log if isinstance(e, ev.JobPlaced) and e.job_id == again]
                return log if len(again_placed) == 2 else None

            log = await eventually(requeued_and_placed_again, timeout=30, what="the requeued job placed again")
    finally:
        stop.set()
        await scheduler
    lost = [e for e in log if isinstance(e, ev.NodeLost)]
    assert [e.node for e in lost] == ["dies"], "only the silent node is lost"
    [failed] = [e for e in log if isinstance(e, ev.JobFailed)]
    assert (failed.job_id, failed.node_fail, failed.node) == (plain, True, "dies")
    [requeued] = [e for e in log if isinstance(e, ev.JobRequeued)]
    assert (requeued.job_id, requeued.run) == (again, 0)
    second = [e for e in log if isinstance(e, ev.JobPlaced) and e.job_id == again][-1]
    assert (second.node, second.run) == ("keeps", 1)


async def test_a_requeue_job_past_its_requeues_ends_failed_and_scheduling_goes_on(bus: Bus, nats_url: str) -> None:
    # Its run fails under it at every placement (it kills its supervisor): the executor reports each
    # JobFailed(node_fail), the scheduler requeues it, and past the limit ends it FAILED. That last
    # JobFailed had the executor's report's message id (same job and run): the stream dropped it as a
    # duplicate and refused the scheduler's whole batch, cycle after cycle, and nothing else was placed.
    settings = SchedulerSettings(nats_url=nats_url, node_lost_after_s=60, use_lease=False, max_requeues=1)
    stop = asyncio.Event()
    scheduler = asyncio.create_task(run(settings, stop))
    try:
        async with beating(bus, "n1"):
            await bus.publish(node("n1", 2, 4000))
            job = await bus.publish(submitted(requeue=True))
            for run_number in (0, 1):

                async def placed(run_number: int = run_number) -> bool:
                    log = [e for _, _, e in await read_log(bus)]
                    return any(isinstance(e, ev.JobPlaced) and e.job_id == job and e.run == run_number for e in log)

                await eventually(placed, what=f"run {run_number} placed")
                vanished = ev.JobFailed(job_id=job, node="n1", exit_code=None, node_fail=True, run=run_number)
                await bus.publish(vanished)  # as the executor reports it, on its subject

            async def failed() -> ev.JobFailed | None:
                log = [e for _, _, e in await read_log(bus)]
                return next((e for e in log if isinstance(e, ev.JobFailed) and not e.node_fail), None)

            final = await eventually(failed, what="the job ended FAILED")
            assert final.job_id == job and final.run == 1 and "requeued 1 times already" in (final.message or "")
            later = await bus.publish(submitted())

            async def later_placed() -> bool:
                log = [e for _, _, e in await read_log(bus)]
                return any(isinstance(e, ev.JobPlaced) and e.job_id == later for e in log)

            await eventually(later_placed, what="a later job placed")
    finally:
        stop.set()
        await scheduler


async def test_a_node_whose_executor_was_replaced_ends_the_runs_of_the_one_before(bus: Bus, nats_url: str) -> None:
    # The node's executor died and another started on another state folder (a pod given a new
    # emptyDir): it beats for the node and cannot adopt the first one's runs, and nothing reported
    # them: they stayed RUNNING for good, their cores taken.
    settings = SchedulerSettings(nats_url=nats_url, node_lost_after_s=1.5, use_lease=False)
    stop = asyncio.Event()
    scheduler = asyncio.create_task(run(settings, stop))
    kv = await bus.heartbeats()
    writer = {"instance": "first"}
    done = asyncio.Event()

    async def beat() -> None:
        while not done.is_set():
            await kv.put(subjects.heartbeat_key("swap"), json.dumps(writer).encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.2)

    beats = asyncio.create_task(beat())
    try:
        await bus.publish(ev.NodeRegistered(node="swap", cpus=2, memory_mb=4000, instance="first"))
        plain = await bus.publish(submitted())
        again = await bus.publish(submitted(requeue=True))

        async def placed(job_id: int, run_number: int) -> bool:
            log = [e for _, _, e in await read_log(bus)]
            return any(isinstance(e, ev.JobPlaced) and (e.job_id, e.run) == (job_id, run_number) for e in log)

        await eventually(lambda: placed(plain, 0), what="the plain job placed")
        await eventually(lambda: placed(again, 0), what="the requeue job placed")
        writer["instance"] = "second"  # the node never stops beating
        await bus.publish(ev.NodeRegistered(node="swap", cpus=2, memory_mb=4000, instance="second"))
        meanwhile = await bus.publish(submitted())

        async def lost() -> ev.NodeLost | None:
            return next((e for _, _, e in await read_log(bus) if isinstance(e, ev.NodeLost)), None)

        declared = await eventually(lost, timeout=30, what="the node declared lost")
        assert "replaced" in declared.reason
        assert not await placed(meanwhile, 0), "placed on the node before the runs there were ended"
        await bus.publish(ev.NodeRegistered(node="swap", cpus=2, memory_mb=4000, instance="second"))
        await eventually(lambda: placed(again, 1), timeout=30, what="the requeue job placed again")
        await eventually(lambda: placed(meanwhile, 0), what="the job submitted meanwhile placed")
    finally:
        done.set()
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats
        stop.set()
        await scheduler
    log = [e for _, _, e in await read_log(bus)]
    [failed] = [e for e in log if isinstance(e, ev.JobFailed)]
    assert (failed.job_id, failed.node_fail, failed.run) == (plain, True, 0)
    [requeued] = [e for e in log if isinstance(e, ev.JobRequeued)]
    assert (requeued.job_id, requeued.run) == (again, 0)
    assert len([e for e in log if isinstance(e, ev.NodeLost)]) == 1


async def test_a_run_placed_on_a_dead_node_after_it_took_its_last_message_runs_again(bus: Bus, nats_url: str) -> None:
    # It ended NODE_FAIL without having run: a node that dies with free cores takes placements until
    # it is declared lost, and nothing told those from runs that had started.
    settings = SchedulerSettings(nats_url=nats_url, node_lost_after_s=1.5, use_lease=False)
    stop = asyncio.Event()
    scheduler = asyncio.create_task(run(settings, stop))

    async def placement(job_id: int) -> int | None:
        return next((s for s, _, e in await read_log(bus) if isinstance(e, ev.JobPlaced) and e.job_id == job_id), None)

    try:
        async with beating(bus, "dies"):
            await bus.publish(node("dies", 2, 4000))
            sub = await placements.subscribe(bus, "dies")  # its executor's consumer
            taken = await bus.publish(submitted())
            taken_at = await eventually(lambda: placement(taken), what="the first job placed")
            [msg] = await sub.fetch(1, timeout=10)
            await msg.ack()  # the executor took it (and started it, as far as anyone knows)
            never = await bus.publish(submitted())
            never_at = await eventually(lambda: placement(never), what="the second job placed")
        # The node dies before it fetches the second placement.

        async def lost() -> ev.NodeLost | None:
            return next((e for _, _, e in await read_log(bus) if isinstance(e, ev.NodeLost)), None)

        declared = await eventually(lost, timeout=30, what="the node declared lost")
        assert declared.delivered is not None and taken_at <= declared.delivered < never_at
        async with beating(bus, "keeps"):
            await bus.publish(node("keeps", 1, 4000))

            async def placed_again() -> bool:
                log = [e for _, _, e in await read_log(bus)]
                return any(isinstance(e, ev.JobPlaced) and (e.job_id, e.run) == (never, 1) for e in log)

            await eventually(placed_again, timeout=30, what="the job that never reached the node placed again")
        info = await bus.js.consumer_info(bus.stream, subjects.executor_consumer("dies"))
        assert not info.paused, "the consumer is resumed once the NodeLost is stored"
    finally:
        stop.set()
        await scheduler
    log = [e for _, _, e in await read_log(bus)]
    [failed] = [e for e in log if isinstance(e, ev.JobFailed)]
    assert (failed.job_id, failed.node_fail) == (taken, True)
    [requeued] = [e for e in log if isinstance(e, ev.JobRequeued)]
    assert requeued.job_id == never and "never reached node dies" in requeued.reason


async def test_a_lost_node_s_consumer_hands_out_nothing_between_the_look_and_the_resume(bus: Bus) -> None:
    # What the NodeLost says was not handed out must not be, until it is stored.
    sub = await placements.subscribe(bus, "frozen")
    first = await bus.publish(ev.JobPlaced(job_id=1, node="frozen", cores=(0,), memory_mb=1), by_scheduler=True)
    [msg] = await sub.fetch(1, timeout=10)
    await msg.ack()
    await bus.publish(ev.JobPlaced(job_id=2, node="frozen", cores=(1,), memory_mb=1), by_scheduler=True)
    lost = await delivered.paused_at(bus, ev.NodeLost(node="frozen"))
    assert lost.delivered == first
    with pytest.raises(nats.errors.TimeoutError):
        await sub.fetch(1, timeout=1.5)
    await delivered.resume(bus, "frozen")
    [later] = await sub.fetch(1, timeout=10)
    assert later.metadata.sequence.stream == first + 1
    unknown = await delivered.paused_at(bus, ev.NodeLost(node="never-had-an-executor"))
    assert unknown.delivered is None
