"""How long a requeue job's supervisor waits without a heartbeat before it fences the job."""

from __future__ import annotations

import pytest

from conductor_executor.fence_lease import fence_after_s


@pytest.mark.parametrize(
    ("lost_after_s", "heartbeat_s", "after_s"),
    [
        (30, 2, 26),  # the defaults: two beats short of the node being declared lost
        (3, 2, 5),  # a loss under four beats: never as short as the time between two beats (it was 1)
        (3, 0.5, 2),
        (6, 0.5, 5),
        (2, 0.2, 2),
    ],
)
def test_the_fence_comes_two_beats_before_the_loss_and_never_between_two_beats(
    lost_after_s: float, heartbeat_s: float, after_s: int
) -> None:
    assert fence_after_s(lost_after_s, heartbeat_s) == after_s
    assert after_s > heartbeat_s + 1  # the silence between two beats, seen once a second, never fences
