"""A node whose executor was replaced by another instance (another state folder: nothing of the runs
of the one before can be adopted) takes no work until those runs are ended by a NodeLost, which the
scheduler's liveness check publishes once the instance replaced is surely gone."""

from __future__ import annotations

from collections.abc import Sequence

from conductor_contracts import events as ev
from conductor_scheduler import snapshot
from conductor_scheduler.liveness import Liveness
from conductor_scheduler.state import ClusterState
from tests.unit.scheduling import Log, node, submitted
from tests.unit.test_liveness import Clock


def _registered(name: str, instance: str, cpus: int = 2) -> ev.NodeRegistered:
    return node(name, cpus).model_copy(update={"instance": instance})


def _with_runs() -> tuple[Log, int, int]:
    log = Log()
    log.append(_registered("n0", "first"))
    plain, again = log.append(submitted()), log.append(submitted(requeue=True))
    log.schedule()
    assert set(log.state.running) == {plain, again}
    return log, plain, again


def _placed(decisions: Sequence[ev.Event]) -> list[int]:
    return [d.job_id for d in decisions if isinstance(d, ev.JobPlaced)]


def test_a_node_registered_by_another_instance_takes_no_work_until_the_runs_before_are_ended() -> None:
    log, plain, again = _with_runs()
    log.append(_registered("n0", "second"))
    later = log.append(submitted(cpus=1))
    log.append(ev.JobCompleted(job_id=plain, node="n0"))  # a core free: still nothing placed there
    decisions = log.schedule()
    assert _placed(decisions) == []
    [reason] = [d for d in decisions if isinstance(d, ev.JobReasonChanged) and d.job_id == later]
    assert "n0 its executor replaced" in reason.detail
    log.append(_registered("n0", "second"))  # registered again before the loss: still replaced
    assert _placed(log.schedule()) == []
    log.append(ev.NodeLost(node="n0", reason="replaced"), by_scheduler=True)
    ended = log.schedule()
    assert [(d.type, d.job_id) for d in ended if not isinstance(d, ev.JobReasonChanged)] == [("JobRequeued", again)]
    log.append(_registered("n0", "second"))
    assert sorted(_placed(log.schedule())) == sorted([later, again])
    assert not log.state.nodes["n0"].replaced


def test_a_restart_of_the_same_instance_an_older_executor_or_a_node_with_no_runs_is_no_replacement() -> None:
    log, _, _ = _with_runs()
    log.append(_registered("n0", "first"))  # the same state folder: its runs are adopted
    assert log.state.nodes["n0"].available
    log.append(_registered("n0", ""))  # an executor older than instances: nothing to tell
    log.append(_registered("n0", "second"))  # "" before it: not known to be another
    assert log.state.nodes["n0"].available
    idle = Log()
    idle.append(_registered("n1", "first"))
    idle.append(_registered("n1", "second"))  # nothing of the first's left to end
    assert idle.state.nodes["n1"].available


def test_a_lost_node_registered_by_another_instance_is_not_replaced_its_runs_are_ended_already() -> None:
    log, _, again = _with_runs()
    log.append(ev.NodeLost(node="n0"), by_scheduler=True)
    log.append(_registered("n0", "second"))
    assert log.state.nodes["n0"].available
    log.schedule()  # its runs ended: the requeue job queued again
    assert again in _placed(log.schedule())


def test_a_snapshot_keeps_the_instance_and_reads_one_made_before_instances() -> None:
    log, _, _ = _with_runs()
    log.append(_registered("n0", "second"))
    restored = snapshot.load(snapshot.dump(log.state))
    assert restored == log.state and restored is not None and restored.nodes["n0"].replaced
    older = snapshot.encode(log.state)
    older["nodes"] = [row[:9] for row in older["nodes"]]
    before = snapshot.decode(older).nodes["n0"]
    assert (before.instance, before.replaced) == ("", False)


def _liveness(log: Log) -> tuple[Clock, Liveness]:
    clock = Clock()
    liveness = Liveness(30, clock)
    liveness.watched_on = 0
    return clock, liveness


def _beat(liveness: Liveness, instance: str, revision: int) -> None:
    liveness.heard_from("n0", revision, f'{{"instance": "{instance}"}}'.encode())


def _lost(liveness: Liveness, state: ClusterState) -> list[str]:
    return [e.reason for e in liveness.silent(state, connection=0)]


def test_the_replaced_node_is_lost_once_the_instance_before_was_silent_for_the_limit() -> None:
    log, _, _ = _with_runs()
    clock, liveness = _liveness(log)
    _beat(liveness, "first", 1)
    clock.now += 5
    log.append(_registered("n0", "second"))
    assert _lost(liveness, log.state) == []  # the second's heartbeat not heard yet: wait for it
    _beat(liveness, "second", 2)  # counted from here: a stalled watch may have missed the first's last beats
    for revision in range(3, 9):  # the node beats on
        clock.now += 5
        _beat(liveness, "second", revision)
        assert _lost(liveness, log.state) == []  # 5 to 30 s since the second's first beat heard
    clock.now += 1
    _beat(liveness, "second", 9)
    [reason] = _lost(liveness, log.state)
    assert "replaced" in reason and "31 s without it" in reason


def test_the_replaced_instance_s_own_longer_silence_is_waited_for() -> None:
    # It fences its requeue jobs after its own 90 s: declared lost after the new one's 30 s, a requeue
    # job ran again elsewhere while it still ran there.
    log, _, _ = _with_runs()
    clock, liveness = _liveness(log)
    liveness.heard_from("n0", 1, b'{"instance": "first", "lost_after_s": 90}')
    log.append(_registered("n0", "second"))
    liveness.heard_from("n0", 2, b'{"instance": "second", "lost_after_s": 30}')
    clock.now += 89
    _beat(liveness, "second", 3)
    assert _lost(liveness, log.state) == []
    clock.now += 2
    _beat(liveness, "second", 4)
    [reason] = _lost(liveness, log.state)
    assert "the limit is 90 s" in reason


def test_a_scheduler_that_never_heard_the_instance_before_waits_the_limit_from_its_start() -> None:
    log, _, _ = _with_runs()
    log.append(_registered("n0", "second"))
    clock, liveness = _liveness(log)
    _beat(liveness, "second", 1)
    clock.now += 29
    _beat(liveness, "second", 2)
    assert _lost(liveness, log.state) == []
    clock.now += 2
    assert len(_lost(liveness, log.state)) == 1


def test_a_replaced_node_whose_runs_before_all_ended_takes_work_without_a_loss() -> None:
    # The executor replaced was frozen, not dead: thawed, it gave the node up and reported its runs.
    log, plain, again = _with_runs()
    log.append(_registered("n0", "second"))
    later = log.append(submitted(cpus=1))
    log.append(ev.JobFailed(job_id=plain, node="n0", exit_code=None, node_fail=True))
    assert _placed(log.schedule()) == []
    log.append(ev.JobFailed(job_id=again, node="n0", exit_code=None, node_fail=True))
    log.schedule()  # the requeue job requeued
    assert not log.state.nodes["n0"].replaced
    assert sorted(_placed(log.schedule())) == sorted([later, again])


def test_the_runs_a_loss_ends_say_what_it_said() -> None:
    # They said "its executor went silent" whatever the loss was: a replaced executor's too.
    log, plain, _ = _with_runs()
    log.append(_registered("n0", "second"))
    log.append(ev.NodeLost(node="n0", reason="its executor was replaced by another"), by_scheduler=True)
    [failed] = [d for d in log.schedule() if isinstance(d, ev.JobFailed)]
    assert failed.job_id == plain and failed.message.startswith("node n0 was lost: its executor was replaced")
    restored = snapshot.load(snapshot.dump(log.state))
    assert restored is not None and restored.nodes["n0"].lost_reason == "its executor was replaced by another"
