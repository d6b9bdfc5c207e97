"""The scheduler service's fold of raw messages, without NATS: what it cannot read or fold it skips,
and the sequences it tracks (the fencing token among them) still move past it."""

from __future__ import annotations

from typing import cast

import pytest

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus
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
