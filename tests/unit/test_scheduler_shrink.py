"""The fold's dicts copied smaller (shrink.py): the same state, the same order, the same decisions;
and after a deep queue drained, tables sized for what is left rather than for the peak."""

from __future__ import annotations

import sys
from typing import Any
from unittest import mock

from hypothesis import given, settings

from conductor_contracts import events as ev
from conductor_scheduler import shrink
from conductor_scheduler.policy import decide
from conductor_scheduler.state import ClusterState, evolve
from tests.unit import test_dependency_properties as dependencies
from tests.unit import test_scheduling_properties as scheduling
from tests.unit.scheduling import Log, node, submitted


def _decided(state: ClusterState) -> list[dict[str, Any]]:
    """The decisions, without what each new event gets of its own (its id and time)."""
    return [d.model_dump(exclude={"event_id", "occurred_at"}) for d in decide(state)]


def _shrunk_at_every_event_decides_alike(log: Log) -> None:
    plain, shrunk = ClusterState(), ClusterState()
    # Every dict counts as oversized: each one is copied after every event.
    with mock.patch.object(shrink, "_SMALL", -1), mock.patch.object(shrink, "_SPARE", 0):
        for seq, event, by_scheduler in log.events:
            evolve(plain, seq, event, by_scheduler=by_scheduler)
            evolve(shrunk, seq, event, by_scheduler=by_scheduler)
            shrink.shrink(shrunk)
            assert shrunk == plain
            assert list(shrunk.pending) == list(plain.pending)
            assert {p: list(q) for p, q in shrunk.queues.items()} == {p: list(q) for p, q in plain.queues.items()}
            assert _decided(shrunk) == _decided(plain)


@settings(max_examples=100, deadline=None)
@given(scheduling.nodes, scheduling.actions)
def test_shrinking_changes_no_decision(nodes: Any, steps: Any) -> None:
    _shrunk_at_every_event_decides_alike(scheduling._run(nodes, steps))


@settings(max_examples=100, deadline=None)
@given(dependencies.steps)
def test_shrinking_changes_no_decision_about_dependencies(steps: Any) -> None:
    _shrunk_at_every_event_decides_alike(dependencies._run(steps)[0])


def test_a_drained_deep_queue_leaves_small_tables() -> None:
    log = Log()
    log.append(node("n0", 64, 1_000_000))
    for _ in range(20_000):
        log.append(submitted(name="same"))  # one (account, name): one dict of jobs not ended
    while log.state.pending:
        for decision in log.schedule():
            if isinstance(decision, ev.JobPlaced):
                log.append(ev.JobCompleted(job_id=decision.job_id, node="n0", run=0))
        if len(log.state.pending) <= 100:
            break
    left = dict(log.state.pending)
    before = _decided(log.state)
    shrink.shrink(log.state)
    state = log.state
    assert state.pending == left and list(state.pending) == list(left)
    assert _decided(state) == before
    for table in (state.pending, state.holds.key_of, *state.queues.values(), *state.holds.active.values()):
        assert sys.getsizeof(table) < 16 * 1024
