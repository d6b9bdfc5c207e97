"""Two schedulers at once, on a real JetStream: fencing alone keeps every job placed at most once
and no node over-allocated; with the lease, only one of them decides at all."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from nats.js.api import AckPolicy, ConsumerConfig

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus, FencedOut
from conductor_scheduler.lease import Lease
from conductor_scheduler.service import Scheduler, run
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


async def test_a_fenced_batch_is_stored_whole_with_each_message_s_headers(bus: Bus) -> None:
    start = (await bus.js.stream_info(bus.stream)).state.last_seq
    decisions = [ev.JobReasonChanged(job_id=j, reason="Priority") for j in (1, 2, 3)]
    traced = [(d, {"traceparent": f"00-{j:032x}-{j:016x}-01"}) for j, d in enumerate(decisions, start=1)]
    last = await bus.publish_fenced_batch(traced, 0)
    assert last == start + 3  # consecutive: nothing can come between a batch's messages
    for seq, (decision, headers) in zip(range(start + 1, last + 1), traced, strict=True):
        stored = await bus.js.get_msg(bus.stream, seq=seq)
        assert ev.decode(stored.data or b"") == decision
        assert stored.headers is not None and stored.headers["traceparent"] == headers["traceparent"]
        assert stored.headers["Nats-Msg-Id"] == subjects.dedupe_id(decision, by_scheduler=True)
    # The next batch is fenced on the last message of this one, whatever else was stored meanwhile.
    await bus.publish(submitted())
    assert await bus.publish_fenced_batch([(ev.JobReasonChanged(job_id=4, reason="Priority"), {})], last) > last


async def test_a_batch_decided_before_a_competing_decision_is_refused_whole(bus: Bus) -> None:
    first = await bus.publish_fenced(ev.JobReasonChanged(job_id=1, reason="a"), 0)
    await bus.publish_fenced(ev.JobReasonChanged(job_id=1, reason="b"), first)  # another scheduler's
    before = (await bus.js.stream_info(bus.stream)).state.last_seq
    stale: list[tuple[ev.Event, dict[str, str]]] = [
        (ev.JobReasonChanged(job_id=j, reason="c"), {}) for j in range(2, 1002)
    ]  # the largest batch
    try:
        await bus.publish_fenced_batch(stale, first)
    except FencedOut:
        pass
    else:
        raise AssertionError("a batch decided from a stale state was accepted")
    assert (await bus.js.stream_info(bus.stream)).state.last_seq == before  # none of it stored


async def test_a_decision_forged_between_decide_and_publish_fences_the_whole_cycle_out(bus: Bus, nats_url: str) -> None:
    """The scheduler decides 2,500 placements (three batches) from a state that a competing decision
    makes stale before it publishes: none of them is stored; folding that decision, it decides again
    around the node the competitor took."""
    await bus.publish(node("n1", 500, 10**6))
    await bus.publish(node("n2", 2000, 10**6))
    await bus.publish(node("n3", 500, 10**6))
    for _ in range(2500):
        await bus.nc.publish(subjects.SUBMITTED, ev.encode(submitted(cpus=1, memory_mb=1)))
    await bus.nc.flush()

    async def stored() -> bool:  # a flush is not an ack: the server stores them shortly after
        return (await bus.js.stream_info(bus.stream)).state.last_seq == 2503

    await eventually(stored, what="every job stored")
    scheduler = Scheduler(bus, SchedulerSettings(nats_url=nats_url, use_lease=False), None)
    for seq, subject, event in await read_log(bus):
        scheduler.fold_message(seq, subject, ev.encode(event))
    assert len(scheduler.state.pending) == 2500
    # A competitor places a job of its own on all of n2 (a forged decision, fenced correctly).
    forged = ev.JobPlaced(job_id=4, node="n2", cores=tuple(range(2000)), memory_mb=1)
    await bus.publish_fenced(forged, scheduler.state.last_scheduler_seq)
    before = (await bus.js.stream_info(bus.stream)).state.last_seq
    await scheduler.decide_and_publish()
    assert scheduler.placed == 0
    assert (await bus.js.stream_info(bus.stream)).state.last_seq == before
    for seq, subject, event in await read_log(bus):  # refolds, as the loop does
        scheduler.fold_message(seq, subject, ev.encode(event))
    await scheduler.decide_and_publish()
    assert scheduler.placed == 1000  # n1 and n3: the competitor's n2 is full
    log = await read_log(bus)
    placements = Counter(e.job_id for _, _, e in log if isinstance(e, ev.JobPlaced))
    assert max(placements.values()) == 1 and placements[4] == 1
    assert {e.node for _, _, e in log if isinstance(e, ev.JobPlaced) and e.job_id != 4} == {"n1", "n3"}
    _assert_fits(log)


async def test_two_schedulers_deciding_thousands_at_a_time_never_double_place(bus: Bus, nats_url: str) -> None:
    """Cycles of more than one batch: each batch is fenced on the one before."""
    for name in ("n1", "n2", "n3"):
        await bus.publish(node(name, 1000, 10**6))
    settings = SchedulerSettings(nats_url=nats_url, use_lease=False)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run(settings, stop)) for _ in range(2)]
    for _ in range(2600):
        await bus.nc.publish(subjects.SUBMITTED, ev.encode(submitted(cpus=1, memory_mb=1)))
    await bus.nc.flush()

    async def all_placed() -> bool:
        return await _stored(bus, subjects.placements_for("*")) >= 2600

    await eventually(all_placed, timeout=60, what="every job placed")
    stop.set()
    schedulers = [s for s in await asyncio.gather(*tasks) if s is not None]
    log = await read_log(bus)
    placements = Counter(e.job_id for _, _, e in log if isinstance(e, ev.JobPlaced))
    assert len(placements) == 2600 and max(placements.values()) == 1, "a job was placed twice"
    assert sum(s.placed for s in schedulers) == 2600
    _assert_fits(log)


def _assert_fits(log: list[tuple[int, str, ev.Event]]) -> None:
    """No job ends in these logs, so a node over-allocated once is over-allocated at the end."""
    cpus = {e.node: e.cpus for _, _, e in log if isinstance(e, ev.NodeRegistered)}
    used: dict[str, list[int]] = {}
    for _, _, e in log:
        if isinstance(e, ev.JobPlaced):
            used.setdefault(e.node, []).extend(e.cores)
    for name, cores in used.items():
        assert len(cores) == len(set(cores)) <= cpus[name], f"{name} over-allocated"


async def _stored(bus: Bus, subject: str) -> int:
    """Messages on ``subject`` in the stream (a consumer's pending count; nothing is read)."""
    name = f"count-{uuid.uuid4().hex[:8]}"
    info = await bus.js.add_consumer(
        bus.stream, config=ConsumerConfig(name=name, ack_policy=AckPolicy.NONE, filter_subject=subject)
    )
    await bus.js.delete_consumer(bus.stream, name)
    return int(info.num_pending or 0)


async def test_a_leader_catching_up_keeps_its_lease_and_a_standby_takes_none(bus: Bus, nats_url: str) -> None:
    kv = await bus.leases()
    settings = SchedulerSettings(nats_url=nats_url)
    leader = Scheduler(bus, settings, Lease(kv, subjects.SCHEDULER_LEASE_KEY, "leader", 10))
    standby = Scheduler(bus, settings, Lease(kv, subjects.SCHEDULER_LEASE_KEY, "standby", 10))
    assert await leader.leads()
    assert leader.lease is not None and standby.lease is not None
    first = leader.lease.revision
    leader.lease.renewed_at -= 5  # folding for a while: the renewal is due
    await leader.keep_lease()
    assert leader.lease.revision != first and leader.lease.held
    await standby.keep_lease()  # catching up is no time to take a lease it does not hold
    assert standby.lease.revision is None
