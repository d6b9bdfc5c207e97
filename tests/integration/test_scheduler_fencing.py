"""Two schedulers at once, on a real JetStream: fencing alone keeps every job placed at most once
and no node over-allocated; with the lease, only one of them decides at all."""

from __future__ import annotations

import asyncio
from collections import Counter

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus, FencedOut
from conductor_scheduler.lease import Lease
from conductor_scheduler.service import run
from conductor_scheduler.settings import SchedulerSettings
from conductor_scheduler.state import ClusterState, evolve
from tests.integration.helpers import eventually, read_log
from tests.unit.scheduling import node, submitted


async def test_a_stale_decision_is_rejected_by_the_server(bus: Bus) -> None:
    first = await bus.publish_fenced(ev.JobReasonChanged(job_id=1, reason="a"), 0)
    await bus.publish(submitted())  # other writers do not move the fence
    second = await bus.publish_fenced(ev.JobReasonChanged(job_id=1, reason="b"), first)
    try:
        await bus.publish_fenced(ev.JobReasonChanged(job_id=1, reason="c"), first)
    except FencedOut:
        pass
    else:
        raise AssertionError("a decision from a stale state was accepted")
    assert second > first


async def _two_schedulers(bus: Bus, nats_url: str, use_lease: bool, jobs: int) -> list[int]:
    """Runs two schedulers over ``jobs`` jobs, completing each placed job; returns how many each placed."""
    await bus.publish(node("n1", 4, 4000))
    await bus.publish(node("n2", 2, 4000))
    settings = SchedulerSettings(nats_url=nats_url, use_lease=use_lease)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run(settings, stop)) for _ in range(2)]
    job_ids = [await bus.publish(submitted(cpus=1 + i % 2)) for i in range(jobs)]

    finished: set[int] = set()

    async def all_placed() -> bool:
        log = await read_log(bus)
        placed = {e.job_id for _, _, e in log if isinstance(e, ev.JobPlaced)}
        for _, _, e in log:  # finish what was placed, so the queue drains through both schedulers
            if isinstance(e, ev.JobPlaced) and e.job_id not in finished:
                finished.add(e.job_id)
                await bus.publish(ev.JobCompleted(job_id=e.job_id, node=e.node))
        return placed >= set(job_ids)

    await eventually(all_placed, timeout=60, what="every job placed")
    await asyncio.sleep(0.5)
    stop.set()
    schedulers = await asyncio.gather(*tasks)
    log = await read_log(bus)
    placements = Counter(e.job_id for _, _, e in log if isinstance(e, ev.JobPlaced))
    assert set(placements) == set(job_ids)
    assert max(placements.values()) == 1, "a job was placed twice"
    _assert_never_overallocated(log)
    return [s.placed for s in schedulers if s is not None]


def _assert_never_overallocated(log: list[tuple[int, str, ev.Event]]) -> None:
    state = ClusterState()
    for seq, subject, event in log:
        evolve(state, seq, event, by_scheduler=subjects.is_scheduler_subject(subject))
        for n in state.nodes.values():
            assert n.free_memory_mb >= 0
            used = [c for a in state.running.values() if a.node == n.name for c in a.cores]
            assert len(used) == len(set(used)) <= n.cpus


async def test_two_deciding_schedulers_never_double_place(bus: Bus, nats_url: str) -> None:
    counts = await _two_schedulers(bus, nats_url, use_lease=False, jobs=40)
    assert sum(counts) == 40


async def test_with_the_lease_only_one_scheduler_decides(bus: Bus, nats_url: str) -> None:
    counts = sorted(await _two_schedulers(bus, nats_url, use_lease=True, jobs=20))
    assert counts == [0, 20]


async def test_lease_is_exclusive_and_passes_on_release(bus: Bus) -> None:
    kv = await bus.leases()
    a, b = Lease(kv, "scheduler", "a", 10), Lease(kv, "scheduler", "b", 10)
    assert await a.tick()
    assert not await b.tick()
    await a.release()
    assert await b.tick()
    assert not await a.tick()


async def test_a_restarted_scheduler_takes_its_own_lease_back_at_once(bus: Bus) -> None:
    kv = await bus.leases()
    first = Lease(kv, "scheduler", "host-1", 10)
    assert await first.tick()
    restarted = Lease(kv, "scheduler", "host-1", 10)  # the same id, after a crash: no release happened
    assert await restarted.tick()
    assert not await Lease(kv, "scheduler", "host-2", 10).tick()
    first.renewed_at -= 5  # its renewal falls due: its revision is stale, so it learns it no longer leads
    assert not await first.tick()
