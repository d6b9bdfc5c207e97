"""Which nodes the scheduler finds silent, on a clock the test moves."""

from __future__ import annotations

from conductor_contracts import heartbeats
from conductor_scheduler.liveness import Liveness
from tests.unit.scheduling import Log, node


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _setup() -> tuple[Clock, Liveness, Log]:
    clock = Clock()
    liveness = Liveness(30, clock)
    liveness.watched_on = 0
    log = Log()
    log.append(node("a", 1))
    log.append(node("b", 1))
    return clock, liveness, log


def test_a_node_silent_for_too_long_is_lost_the_others_not() -> None:
    clock, liveness, log = _setup()
    clock.now += 20
    liveness.heard_from("a", revision=1)
    clock.now += 15  # b: 35 s since we started listening; a: 15 s since its heartbeat
    lost = liveness.silent(log.state, connection=0)
    assert [(e.node, "35 s" in e.reason) for e in lost] == [("b", True)]


def test_the_same_revision_delivered_again_is_no_heartbeat() -> None:
    clock, liveness, log = _setup()
    liveness.heard_from("a", revision=7)
    liveness.heard_from("b", revision=3)
    clock.now += 25
    liveness.heard_from("a", revision=7)  # a new watch delivers the value we saw
    liveness.heard_from("b", revision=4)
    clock.now += 10
    assert [e.node for e in liveness.silent(log.state, connection=0)] == ["a"]


def test_a_registration_counts_and_a_lost_node_is_not_lost_twice() -> None:
    clock, liveness, log = _setup()
    clock.now += 31
    liveness.heard_from("a")
    lost = liveness.silent(log.state, connection=0)
    assert [e.node for e in lost] == ["b"]
    log.append(lost[0], by_scheduler=True)
    assert liveness.silent(log.state, connection=0) == []


def test_nobody_is_lost_before_a_watch_on_this_connection_heard_every_key() -> None:
    clock, liveness, log = _setup()
    clock.now += 60
    assert liveness.silent(log.state, connection=1) == []  # reconnected: the watch must start again
    liveness.watched_on = None
    assert liveness.silent(log.state, connection=0) == []
    liveness.watched_on = 1
    liveness.listening()
    clock.now += 29
    assert liveness.silent(log.state, connection=1) == []


def test_a_node_whose_executor_waits_longer_before_it_fences_is_given_its_own_silence() -> None:
    # Its executor set 90 s, the scheduler 30: the job requeued at 30 s ran on there until its fence
    # at 86 s, twice at once.
    clock, liveness, log = _setup()
    liveness.heard_from("a", revision=1, value=b'{"node": "a", "lost_after_s": 90}')
    liveness.heard_from("b", revision=1, value=b'{"node": "b", "lost_after_s": 10}')  # shorter: ours holds
    clock.now += 31
    assert [e.node for e in liveness.silent(log.state, connection=0)] == ["b"]
    clock.now += 60
    [lost] = [e for e in liveness.silent(log.state, connection=0) if e.node == "a"]
    assert "the limit is 90 s" in lost.reason


def test_a_node_s_own_silence_counts_up_to_ten_times_the_schedulers() -> None:
    # 1e9 kept a dead node UP, its jobs RUNNING, for good.
    clock, liveness, log = _setup()
    liveness.heard_from("a", revision=1, value=b'{"node": "a", "lost_after_s": 1e9}')
    liveness.heard_from("b", revision=1)
    clock.now += 299
    assert [e.node for e in liveness.silent(log.state, connection=0)] == ["b"]
    clock.now += 2
    assert "a" in [e.node for e in liveness.silent(log.state, connection=0)]


def test_a_heartbeat_that_says_no_usable_silence_leaves_the_schedulers_own() -> None:
    clock, liveness, log = _setup()
    for value in (b"not json", b'{"lost_after_s": "90"}', b'{"lost_after_s": 1e999}', b"[]", b'{"lost_after_s": -5}'):
        liveness.heard_from("a", revision=hash(value), value=value)
    liveness.heard_from("b", revision=1)
    clock.now += 31
    assert [e.node for e in liveness.silent(log.state, connection=0)] == ["a", "b"]


def test_a_heartbeat_is_read_as_it_was_written_and_anything_else_as_saying_nothing() -> None:
    registration = node("a", 2)
    written = heartbeats.encode(registration, 5.0, instance="i1", lost_after_s=90.0, pid=7, host="h")
    assert heartbeats.decode(written) == heartbeats.Beat("i1", 90.0, "pid 7 on h")
    for value in (
        None,
        b"",
        b"[]",
        b'{"instance": "", "lost_after_s": true}',
        b'{"instance": 5, "lost_after_s": 1e999}',
    ):
        assert (heartbeats.decode(value).instance, heartbeats.decode(value).lost_after_s) == (None, None)
