"""Runs placed on a node after its executor was last handed a message (the NodeLost says up to
which sequence) never started: they run again, requeue or not, instead of ending NODE_FAIL."""

from __future__ import annotations

from conductor_contracts import events as ev
from conductor_scheduler import delivered, policy, snapshot
from tests.unit.scheduling import Log, node, submitted


def _two_placed() -> tuple[Log, int, int, int]:
    log = Log()
    log.append(node("n0", 2))
    first = log.append(submitted())
    log.schedule()
    [(_, delivered)] = [(e.job_id, seq) for seq, e, _ in log.events if isinstance(e, ev.JobPlaced)]
    second = log.append(submitted())
    log.schedule()
    assert set(log.state.running) == {first, second}
    return log, first, second, delivered


def test_a_run_placed_after_what_the_node_was_handed_runs_again_the_one_before_ends_node_fail() -> None:
    log, first, second, delivered = _two_placed()
    log.append(ev.NodeLost(node="n0", delivered=delivered), by_scheduler=True)
    ended = {(d.type, d.job_id): d for d in log.schedule()}
    assert set(ended) == {("JobFailed", first), ("JobRequeued", second)}
    failed, requeued = ended["JobFailed", first], ended["JobRequeued", second]
    assert isinstance(failed, ev.JobFailed) and failed.node_fail
    assert isinstance(requeued, ev.JobRequeued) and "never reached node n0" in requeued.reason
    log.append(node("n1", 1))
    assert [(d.job_id, d.run) for d in log.schedule() if isinstance(d, ev.JobPlaced)] == [(second, 1)]


def test_a_loss_that_does_not_say_ends_every_run_as_started() -> None:
    log, first, second, _ = _two_placed()
    log.append(ev.NodeLost(node="n0"), by_scheduler=True)
    assert sorted((d.type, d.job_id) for d in log.schedule()) == [("JobFailed", first), ("JobFailed", second)]


def test_a_snapshot_keeps_where_runs_were_placed_and_reads_one_made_before() -> None:
    log, first, _, delivered = _two_placed()
    restored = snapshot.load(snapshot.dump(log.state))
    assert restored == log.state and restored is not None
    assert restored.running[first].placed_seq == delivered
    older = snapshot.encode(log.state)
    older["running"] = [row[:6] for row in older["running"]]
    assert {a.placed_seq for a in snapshot.decode(older).running.values()} == {0}  # never "not delivered"


def test_a_loss_published_long_after_its_consumer_was_paused_says_nothing_of_what_was_delivered() -> None:
    # The pause may have ended before it is stored: what was handed out meanwhile is not counted.
    said, unknown = ev.NodeLost(node="n0", delivered=7), ev.NodeLost(node="n1")
    assert delivered.fresh([said, unknown], paused_at=100.0, now=100.0 + delivered.FRESH_S) == [said, unknown]
    late = delivered.fresh([said, unknown], paused_at=100.0, now=100.1 + delivered.FRESH_S)
    assert [e.delivered for e in late] == [None, None] and late[0].node == "n0"


def test_the_servers_pause_remaining_is_read_in_seconds() -> None:
    assert delivered._seconds(15_000_000_000) == 15.0
    assert delivered._seconds("2500000000") == 2.5
    nothing: tuple[object, ...] = (None, 0, -5, "soon", [])
    assert [delivered._seconds(v) for v in nothing] == [None] * 5


def test_nothing_is_placed_on_a_node_in_the_cycle_that_declares_it_lost() -> None:
    # The batch was [NodeLost(n0), JobPlaced(j on n0)]: a placement after the loss is no run it ends,
    # and the job stayed RUNNING for good on a node that never came back.
    log = Log()
    log.append(node("n0", 2))
    job = log.append(submitted())
    decisions = policy.decide_losing(log.state, {"n0"})
    assert not [d for d in decisions if isinstance(d, ev.JobPlaced)]
    assert not log.state.nodes["n0"].lost  # the fold declares it lost, from the NodeLost
    log.append(ev.NodeLost(node="n0"), by_scheduler=True)
    for decision in decisions:
        log.append(decision, by_scheduler=True)
    log.append(node("n1", 1))
    assert [(d.job_id, d.node) for d in log.schedule() if isinstance(d, ev.JobPlaced)] == [(job, "n1")]
