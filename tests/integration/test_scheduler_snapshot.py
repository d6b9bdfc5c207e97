"""Snapshots on a real JetStream: a restarted scheduler starts from the newest snapshot and folds only
what follows it, deciding as if it had replayed everything; a damaged one means a full replay."""

from __future__ import annotations

import asyncio
from collections import Counter

from conductor_contracts import events as ev
from conductor_platform.bus import Bus
from conductor_scheduler import snapshot
from conductor_scheduler.service import Scheduler, run
from conductor_scheduler.settings import SchedulerSettings
from tests.integration.helpers import eventually, read_log
from tests.unit.scheduling import node, submitted


async def _placed(bus: Bus) -> Counter[int]:
    return Counter(e.job_id for _, _, e in await read_log(bus) if isinstance(e, ev.JobPlaced))


async def _run_until(bus: Bus, settings: SchedulerSettings, job_ids: list[int]) -> Scheduler:
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))

    async def placed() -> bool:
        return set(job_ids) <= set(await _placed(bus))

    await eventually(placed, what="every job placed")
    await asyncio.sleep(0.3)
    stop.set()
    scheduler = await task
    assert scheduler is not None
    return scheduler


async def test_a_restarted_scheduler_starts_from_its_snapshot(bus: Bus, nats_url: str) -> None:
    settings = SchedulerSettings(nats_url=nats_url, snapshot_every_events=5, snapshot_min_interval_s=0)
    await bus.publish(node("n1", 64, 64_000))
    first_jobs = [await bus.publish(submitted()) for _ in range(10)]
    first = await _run_until(bus, settings, first_jobs)
    assert first.snapshot_seq > 0, "no snapshot was stored"

    # A new scheduler: from the snapshot, it folds only what follows it.
    more = [await bus.publish(submitted()) for _ in range(3)]
    second = await _run_until(bus, settings, more)
    last = (await bus.js.stream_info(bus.stream)).state.last_seq
    assert second.folded < last - first.snapshot_seq + 10
    assert second.state.last_seq == last
    assert max((await _placed(bus)).values()) == 1, "a job placed twice"

    # A damaged snapshot: refused, the whole log replayed, and the same decisions.
    store = await bus.js.object_store(snapshot.BUCKET)
    await store.put(snapshot.NAME, b"conductor-scheduler-snapshot {}\ngarbage")
    again = [await bus.publish(submitted())]
    third = await _run_until(bus, settings, again)
    assert third.folded >= last
    assert max((await _placed(bus)).values()) == 1, "a job placed twice"


async def test_a_quiet_log_is_snapshotted_by_its_maximum_age(bus: Bus, nats_url: str) -> None:
    """Far fewer events than snapshot_every_events: a snapshot all the same once the last is as old
    as snapshot_max_age_s. What `conductor compact` may archive is bounded by the newest snapshot, and
    a quiet system held its log back for good (review of 2026-12-02)."""
    settings = SchedulerSettings(nats_url=nats_url, snapshot_min_interval_s=0, snapshot_max_age_s=0.5)
    assert settings.snapshot_every_events > 100
    await bus.publish(node("n1", 64, 64_000))
    jobs = [await bus.publish(submitted()) for _ in range(3)]
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    try:

        async def stored_up_to_the_placements() -> bool:
            state = await snapshot.restore(bus)
            return state is not None and set(jobs) <= set(state.running)

        await eventually(stored_up_to_the_placements, what="a snapshot of the placed jobs")
    finally:
        stop.set()
        await task
