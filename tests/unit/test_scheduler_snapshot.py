"""Snapshots of the fold: a state restored from one and folded on equals the state folded from the
start, whatever the log; anything but a whole snapshot of this format is refused."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from conductor_scheduler import snapshot
from conductor_scheduler.state import ClusterState, evolve
from tests.unit import test_dependency_properties as dependencies
from tests.unit import test_scheduling_properties as scheduling
from tests.unit.scheduling import Log, submitted


def _restored_at(log: Log, cut: int) -> ClusterState:
    """Fold the first ``cut`` events, snapshot, restore, fold the rest."""
    state = ClusterState()
    for seq, event, by_scheduler in log.events[:cut]:
        evolve(state, seq, event, by_scheduler=by_scheduler)
    restored = snapshot.load(snapshot.dump(state))
    assert restored == state
    for seq, event, by_scheduler in log.events[cut:]:
        evolve(restored, seq, event, by_scheduler=by_scheduler)
    return restored


@settings(max_examples=200, deadline=None)
@given(scheduling.nodes, scheduling.actions, st.floats(0, 1))
def test_restored_and_folded_on_equals_folded_from_the_start(nodes: Any, steps: Any, where: float) -> None:
    log = scheduling._run(nodes, steps)
    assert _restored_at(log, int(where * len(log.events))) == log.state


@settings(max_examples=200, deadline=None)
@given(dependencies.steps, st.floats(0, 1))
def test_with_dependencies_held_and_settled(steps: Any, where: float) -> None:
    log, _ = dependencies._run(steps)
    assert _restored_at(log, int(where * len(log.events))) == log.state


def test_anything_but_a_whole_snapshot_of_this_format_is_refused() -> None:
    log, _ = dependencies._run([("submit", [], False, True, False), ("schedule",)])
    data = snapshot.dump(log.state)
    assert snapshot.load(data) == log.state
    assert snapshot.load(b"") is None
    assert snapshot.load(data[: len(data) // 2]) is None  # cut short
    assert snapshot.load(data[:-1] + bytes([data[-1] ^ 1])) is None  # one bit flipped
    current, older = f'"format": {snapshot.FORMAT}'.encode(), f'"format": {snapshot.FORMAT - 1}'.encode()
    assert current in data
    assert snapshot.load(data.replace(current, older)) is None  # another format
    assert snapshot.load(b"conductor-scheduler-snapshot {}\n") is None
    assert snapshot.load(b"\x80\x04pickle") is None


def test_a_submission_s_trace_is_kept() -> None:
    log = Log()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    evolve(log.state, 1, submitted(), traceparent=parent)
    restored = snapshot.load(snapshot.dump(log.state))
    assert restored is not None and restored.pending[1].traceparent == parent
