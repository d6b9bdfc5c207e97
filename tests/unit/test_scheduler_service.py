"""The scheduler service's fold of raw messages, without NATS: what it cannot read or fold it skips,
and the sequences it tracks (the fencing token among them) still move past it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import MAX_BATCH, Bus, FencedOut
from conductor_scheduler import service
from conductor_scheduler.settings import SchedulerSettings
from conductor_scheduler.state import ClusterState
from conductor_scheduler.state import evolve as state_evolve
from tests.unit.scheduling import node, submitted


def test_what_cannot_be_decoded_or_folded_is_skipped_and_the_fold_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    def evolve(
        state: ClusterState, seq: int, event: ev.Event, *, by_scheduler: bool = False, traceparent: str | None = None
    ) -> ClusterState:
        if seq == 2:
            raise KeyError("a fold that cannot take this event")
        return state_evolve(state, seq, event, by_scheduler=by_scheduler, traceparent=traceparent)

    monkeypatch.setattr(service, "evolve", evolve)
    scheduler = service.Scheduler(cast(Bus, None), SchedulerSettings(), None)
    scheduler.fold_message(1, "conductor.exec.n1.node.registered", ev.encode(node("n1", 2)))
    scheduler.fold_message(2, subjects.SUBMITTED, ev.encode(submitted()))
    scheduler.fold_message(3, "conductor.sched.job.9.reason", b"\xff not an event")
    scheduler.fold_message(4, subjects.SUBMITTED, ev.encode(submitted()))
    assert scheduler.skipped == 2
    assert list(scheduler.state.pending) == [4] and set(scheduler.state.nodes) == {"n1"}
    assert scheduler.state.last_seq == 4
    assert scheduler.state.last_scheduler_seq == 3  # the server counts it on the fenced subjects


class BatchBus:
    """Takes the scheduler's fenced batches: each stored at consecutive sequences from 100 on, or
    refused (``FencedOut``) from batch number ``refuse_from`` on."""

    def __init__(self, refuse_from: int = 10**9) -> None:
        self.nc = SimpleNamespace(stats={"reconnects": 0})
        self.batches: list[tuple[int, list[tuple[ev.Event, dict[str, str]]]]] = []  # (expected, decisions)
        self.refuse_from = refuse_from
        self.last = 100
        self.singles: list[tuple[int, ev.Event]] = []  # (expected, decision)

    async def publish_fenced(self, event: ev.Event, expected: int, headers: dict[str, str] | None = None) -> int:
        self.singles.append((expected, event))
        self.last += 1
        return self.last

    async def publish_fenced_batch(self, decisions: list[tuple[ev.Event, dict[str, str]]], expected: int) -> int:
        if len(self.batches) + 1 >= self.refuse_from:
            raise FencedOut("another scheduler decided")
        assert len(decisions) <= MAX_BATCH
        self.batches.append((expected, list(decisions)))
        self.last += len(decisions)
        return self.last


def _queued(scheduler: service.Scheduler, jobs: int) -> None:
    scheduler.fold_message(1, "conductor.exec.n1.node.registered", ev.encode(node("n1", 4000, 10**6)))
    scheduler.fold_message(2, "conductor.sched.job.0.reason", ev.encode(ev.JobReasonChanged(job_id=0, reason="x")))
    for seq in range(3, 3 + jobs):
        scheduler.fold_message(seq, subjects.SUBMITTED, ev.encode(submitted()), {"traceparent": PARENT})


PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_a_cycle_goes_out_in_fenced_batches_each_fenced_on_the_one_before() -> None:
    bus = BatchBus()
    scheduler = service.Scheduler(cast(Bus, bus), SchedulerSettings(), None)
    _queued(scheduler, 2500)
    await scheduler.decide_and_publish()
    assert [len(decisions) for _, decisions in bus.batches] == [1000, 1000, 500]
    assert [expected for expected, _ in bus.batches] == [2, 1100, 2100]  # the fold's token, then each batch's last
    placed = [d.job_id for _, decisions in bus.batches for d, _ in decisions if isinstance(d, ev.JobPlaced)]
    assert placed == list(range(3, 2503))  # submit order, each once
    # Not tracing here: each message carries its job's submission trace.
    assert all(h == {"traceparent": PARENT} for _, decisions in bus.batches for _, h in decisions)
    assert scheduler.placed == 2500 and scheduler.awaiting_seq == 2600


async def test_a_small_cycle_goes_out_one_fenced_publish_at_a_time() -> None:
    """An atomic batch costs nats-server a file store of its own: not worth it for a few decisions."""
    bus = BatchBus()
    scheduler = service.Scheduler(cast(Bus, bus), SchedulerSettings(), None)
    _queued(scheduler, service.BATCH_FROM - 1)
    await scheduler.decide_and_publish()
    assert bus.batches == []
    assert [expected for expected, _ in bus.singles] == [2, *range(101, 100 + service.BATCH_FROM - 1)]
    assert [d.job_id for _, d in bus.singles if isinstance(d, ev.JobPlaced)] == list(
        range(3, 3 + service.BATCH_FROM - 1)
    )
    assert scheduler.awaiting_seq == 100 + service.BATCH_FROM - 1


async def test_a_refused_batch_ends_the_cycle_and_keeps_what_was_stored() -> None:
    bus = BatchBus(refuse_from=2)
    scheduler = service.Scheduler(cast(Bus, bus), SchedulerSettings(), None)
    _queued(scheduler, 2500)
    await scheduler.decide_and_publish()
    assert len(bus.batches) == 1  # the third is never tried: it would build on a refused one
    assert scheduler.placed == 1000 and scheduler.awaiting_seq == 1100
    await scheduler.decide_and_publish()  # its own decisions are not folded back yet: no new cycle
    assert len(bus.batches) == 1


async def test_decisions_stored_before_a_fenced_out_one_are_accounted_for() -> None:
    """One by one, a cycle can be fenced out half-way: what was stored before counts as published."""

    class FencedAtThird(BatchBus):
        async def publish_fenced(self, event: ev.Event, expected: int, headers: dict[str, str] | None = None) -> int:
            if len(self.singles) == 2:
                raise FencedOut("another scheduler decided")
            return await super().publish_fenced(event, expected, headers)

    bus = FencedAtThird()
    scheduler = service.Scheduler(cast(Bus, bus), SchedulerSettings(), None)
    _queued(scheduler, 5)
    await scheduler.decide_and_publish()
    assert len(bus.singles) == 2 and scheduler.placed == 2 and scheduler.awaiting_seq == 102
