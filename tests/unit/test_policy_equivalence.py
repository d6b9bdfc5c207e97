"""The policy's first fit resumes, per job size, where it last placed, lists a node's free cores only
to place on it, and walks the partitions' queues side by side: the decisions must be exactly those of
the plain first fit over the whole queue it replaced (``policy_reference``), over arbitrary logs with
many nodes shared by two partitions and repeated job sizes, and from a state restored from a snapshot."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

from hypothesis import example, given, settings
from hypothesis import strategies as st

from conductor_scheduler import snapshot
from conductor_scheduler.policy import Decision, decide
from conductor_scheduler.state import ClusterState
from tests.unit import policy_reference, scheduling
from tests.unit.test_scheduling_properties import _run

nodes = st.lists(
    st.tuples(
        st.integers(1, 6), st.sampled_from([300, 1000, 4000]), st.sampled_from([("default",), ("default", "gpu")])
    ),
    min_size=1,
    max_size=12,
)
actions = st.lists(
    st.one_of(
        st.tuples(
            st.just("submit"),
            st.integers(1, 4),
            st.sampled_from([100, 250, 1000]),  # few sizes: jobs of one size follow each other
            st.sampled_from(["default", "gpu"]),
            st.booleans(),
        ),
        st.tuples(st.sampled_from(["lose", "drain", "resume"]), st.integers(0, 11)),
        st.tuples(st.just("finish"), st.integers(0, 50), st.sampled_from(["completed", "failed", "cancelled"])),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
        st.tuples(st.just("schedule")),
        st.tuples(st.just("register"), st.integers(0, 11), st.integers(1, 6), st.sampled_from([300, 1000, 4000])),
    ),
    max_size=80,
)


def _comparable(decisions: list[Decision]) -> list[dict[str, Any]]:
    return [d.model_dump(exclude={"event_id", "occurred_at"}) for d in decisions]


@settings(max_examples=300, deadline=None)
@given(nodes, actions, st.sampled_from([0, 2, 100]))
# A job cancelled while running, then its node lost: the reference once still failed it NODE_FAIL.
@example([(1, 300, ("default",))], [("submit", 1, 100, "default", False), ("schedule",), ("cancel", 0), ("lose", 0)], 0)
def test_the_policy_decides_what_the_plain_first_fit_decided(
    node_specs: list[Any], steps: list[tuple[Any, ...]], queue_depth: int
) -> None:
    compared = 0

    def both(state: ClusterState, *, queue_depth: int = queue_depth) -> list[Decision]:
        nonlocal compared
        ours = decide(state, queue_depth=queue_depth)
        assert _comparable(ours) == _comparable(policy_reference.decide(state, queue_depth=queue_depth))
        # A state restored from a snapshot builds its queues again: the same decisions.
        restored = snapshot.decode(json.loads(json.dumps(snapshot.encode(state))))
        assert _comparable(decide(restored, queue_depth=queue_depth)) == _comparable(ours)
        compared += 1
        return ours

    with mock.patch.object(scheduling, "decide", both):
        _run(node_specs, steps)
    assert compared >= 1
