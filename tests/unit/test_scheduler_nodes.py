"""Lost, drained and returning nodes in the scheduler's pure fold and policy."""

from __future__ import annotations

import pytest

from conductor_contracts import events as ev
from conductor_scheduler.policy import MAX_REQUEUES, decide
from tests.unit.scheduling import Log, node, replay, submitted


def _decisions(log: Log) -> list[tuple[str, int]]:
    return [(d.type, d.job_id) for d in log.schedule() if not isinstance(d, ev.JobReasonChanged)]


def test_a_lost_node_fails_its_jobs_and_requeues_those_that_asked() -> None:
    log = Log()
    log.append(node("n0", 2))
    plain = log.append(submitted())
    again = log.append(submitted(requeue=True))
    assert _decisions(log) == [("JobPlaced", plain), ("JobPlaced", again)]
    log.append(ev.NodeLost(node="n0", reason="no heartbeat for 30 s"), by_scheduler=True)
    decisions = log.schedule()
    failed = [d for d in decisions if isinstance(d, ev.JobFailed)]
    requeued = [d for d in decisions if isinstance(d, ev.JobRequeued)]
    assert [(d.job_id, d.node_fail, d.node) for d in failed] == [(plain, True, "n0")]
    assert "n0" in failed[0].message and "lost" in failed[0].message
    assert [(d.job_id, d.node) for d in requeued] == [(again, "n0")]
    assert not log.state.running and list(log.state.pending) == [again]
    assert _decisions(log) == []  # nowhere to go: n0 is lost
    log.append(node("n1", 1))
    placed = log.schedule()
    assert [(d.type, d.job_id, getattr(d, "run", None)) for d in placed] == [("JobPlaced", again, 1)]


def test_a_requeue_job_cancelled_while_running_ends_cancelled_when_its_node_is_lost() -> None:
    # Its executor never got to the cancel: requeued, the job would come back PENDING and be placed
    # again before the next executor found the stored cancel.
    log = Log()
    log.append(node("n0", 2))
    lost = log.append(submitted(requeue=True))
    fenced = log.append(submitted(requeue=True))
    log.schedule()
    log.append(ev.JobCancelRequested(job_id=lost))
    log.append(ev.JobCancelRequested(job_id=fenced))
    # One reported NODE_FAIL by its own executor (fenced), then the node is lost under the other.
    log.append(ev.JobFailed(job_id=fenced, node="n0", exit_code=None, message="fenced", node_fail=True))
    log.append(ev.NodeLost(node="n0"), by_scheduler=True)
    decisions = log.schedule()
    assert sorted((d.type, d.job_id, getattr(d, "node", None)) for d in decisions) == sorted(
        [("JobCancelled", lost, "n0"), ("JobCancelled", fenced, "n0")]
    )
    assert not log.state.running and not log.state.pending and not log.state.cancel_requested
    log.append(node("n1", 2))
    assert _decisions(log) == []


def test_a_cancel_folded_after_its_requeue_decision_cancels_the_requeued_job() -> None:
    log = Log()
    log.append(node("n0", 1))
    job = log.append(submitted(requeue=True))
    log.schedule()
    log.append(ev.NodeLost(node="n0"), by_scheduler=True)
    requeue = [d for d in decide(log.state) if isinstance(d, ev.JobRequeued)]
    assert requeue
    log.append(ev.JobCancelRequested(job_id=job))  # stored between the decision and its fold
    for decision in requeue:
        log.append(decision, by_scheduler=True)
    assert _decisions(log) == [("JobCancelled", job)]


def test_late_reports_of_an_earlier_run_change_nothing() -> None:
    log = Log()
    log.append(node("n0", 1))
    log.append(node("n1", 1))
    job = log.append(submitted(requeue=True))
    log.schedule()
    log.append(ev.NodeLost(node="n0"), by_scheduler=True)
    log.schedule()  # requeued
    log.schedule()  # placed again, on n1, run 1
    assert log.state.running[job].node == "n1" and log.state.running[job].run == 1
    log.append(ev.JobCompleted(job_id=job, node="n0", run=0))  # the old executor, back from the dead
    assert job in log.state.running
    log.append(ev.JobCompleted(job_id=job, node="n1", run=1))
    assert job not in log.state.running and not log.state.pending


def test_a_lost_node_that_registers_again_takes_work() -> None:
    log = Log()
    log.append(node("n0", 1))
    log.append(ev.NodeLost(node="n0"), by_scheduler=True)
    job = log.append(submitted())
    reasons = [d for d in log.schedule() if isinstance(d, ev.JobReasonChanged)]
    assert [(d.job_id, d.reason) for d in reasons] == [(job, "Resources")] and "n0 lost" in reasons[0].detail
    log.append(node("n0", 2))
    assert _decisions(log) == [("JobPlaced", job)]


@pytest.mark.parametrize("by_node", [False, True], ids=["by an operator", "by the node's executor"])
def test_drain_stops_new_placements_and_resume_restarts_them(by_node: bool) -> None:
    log = Log()
    log.append(node("n0", 2))
    first = log.append(submitted())
    log.schedule()
    log.append(ev.NodeDrainRequested(node="n0", reason="disk swap", by_node=by_node))
    second = log.append(submitted())
    assert _decisions(log) == []
    log.append(node("n0", 2))  # its executor restarts: still drained
    assert _decisions(log) == []
    assert first in log.state.running  # running jobs finish
    log.append(ev.JobCompleted(job_id=first, node="n0"))
    assert log.state.nodes["n0"].draining == "disk swap"
    log.append(ev.NodeResumeRequested(node="n0"))
    assert _decisions(log) == [("JobPlaced", second)]


def test_losing_an_unknown_or_already_lost_node_changes_nothing() -> None:
    log = Log()
    log.append(node("n0", 1))
    job = log.append(submitted())
    log.schedule()
    log.append(ev.NodeLost(node="nope"), by_scheduler=True)
    assert log.schedule() == []
    log.append(ev.NodeLost(node="n0"), by_scheduler=True)
    assert [d.type for d in log.schedule()] == ["JobFailed"]
    log.append(ev.NodeLost(node="n0"), by_scheduler=True)
    assert log.schedule() == []
    assert replay(log.events) == log.state
    assert job not in log.state.running


def test_a_requeue_job_whose_node_failed_under_it_is_requeued() -> None:
    log = Log()
    log.append(node("n0", 2))
    again = log.append(submitted(requeue=True))
    plain = log.append(submitted())
    log.schedule()
    for job in (again, plain):  # e.g. its executor fenced it off, or its supervisor vanished
        log.append(ev.JobFailed(job_id=job, node="n0", exit_code=None, node_fail=True, message="fenced"))
    assert plain not in log.state.running and again in log.state.running
    decisions = [d for d in log.schedule() if not isinstance(d, ev.JobReasonChanged)]
    assert [(d.type, d.job_id) for d in decisions][:1] == [("JobRequeued", again)]
    assert [(d.type, d.job_id, getattr(d, "run", None)) for d in log.schedule()] == [("JobPlaced", again, 1)]


def test_a_requeue_job_is_requeued_at_most_max_requeues_times() -> None:
    # A job that kills its supervisor failed under its node at every run, and was requeued for ever.
    log = Log()
    log.append(node("n0", 2))
    job = log.append(submitted(requeue=True))
    requeues = 0
    for run in range(MAX_REQUEUES + 1):
        placed = [d for d in log.schedule() if isinstance(d, ev.JobPlaced)]
        assert [(d.job_id, d.run) for d in placed] == [(job, run)]
        log.append(ev.JobFailed(job_id=job, node="n0", exit_code=None, node_fail=True, message="gone", run=run))
        decisions = [d for d in log.schedule() if not isinstance(d, ev.JobReasonChanged)]
        requeues += sum(isinstance(d, ev.JobRequeued) for d in decisions)
    assert requeues == MAX_REQUEUES
    [failed] = [d for d in decisions if isinstance(d, ev.JobFailed)]
    assert failed.run == MAX_REQUEUES and not failed.node_fail
    assert f"requeued {MAX_REQUEUES} times already" in (failed.message or "")
    assert job not in log.state.running and job not in log.state.pending
    assert log.schedule() == []


def test_max_requeues_zero_ends_a_requeue_job_at_its_first_loss() -> None:
    log = Log()
    log.append(node("n0", 2))
    job = log.append(submitted(requeue=True))
    log.schedule()
    log.append(ev.NodeLost(node="n0"), by_scheduler=True)
    [failed] = [d for d in decide(log.state, max_requeues=0) if isinstance(d, ev.JobFailed)]
    assert failed.job_id == job and "node n0 was lost" in (failed.message or "")


def test_a_requeue_says_whether_the_node_was_lost_or_the_run_failed_under_it() -> None:
    log = Log()
    log.append(node("n0", 2))
    log.append(node("n1", 2))
    failed_under = log.append(submitted(requeue=True, cpus=2))
    on_lost = log.append(submitted(requeue=True, cpus=2))
    placed = {d.job_id: d.node for d in log.schedule() if isinstance(d, ev.JobPlaced)}
    log.append(ev.JobFailed(job_id=failed_under, node=placed[failed_under], exit_code=None, node_fail=True))
    log.append(ev.NodeLost(node=placed[on_lost]), by_scheduler=True)
    reasons = {d.job_id: d.reason for d in log.schedule() if isinstance(d, ev.JobRequeued)}
    assert reasons[on_lost] == f"node {placed[on_lost]} was lost (its executor went silent)"
    assert "ended without a record of how" in reasons[failed_under] and "lost" not in reasons[failed_under]


def test_a_run_its_node_refused_before_it_started_is_placed_again_requeue_or_not() -> None:
    # A node back smaller than when the job was placed there refuses it: it ended FAILED, never run.
    log = Log()
    log.append(node("n0", 4))
    job = log.append(submitted(cpus=4))
    assert _decisions(log) == [("JobPlaced", job)]
    log.append(node("n0", 2))  # registered again, smaller
    log.append(node("n1", 4))
    why = "placement does not fit this node: cores [2, 3] are outside this node's 0..1"
    log.append(
        ev.JobFailed(job_id=job, node="n0", exit_code=None, message=why, node_fail=True, never_started=True, run=0)
    )
    decisions = log.schedule()
    [requeued] = [d for d in decisions if isinstance(d, ev.JobRequeued)]
    assert requeued.job_id == job and "refused its run before it started" in requeued.reason and why in requeued.reason
    assert _decisions(log) == [("JobPlaced", job)]
    assert log.state.running[job].node == "n1" and log.state.running[job].run == 1
    assert replay(log.events).running == log.state.running  # the fold alone says the same


def test_a_run_refused_before_it_started_too_often_ends_failed() -> None:
    log = Log()
    log.append(node("n0", 1))
    job = log.append(submitted())
    refused = ev.JobFailed(job_id=job, node="n0", exit_code=None, message="no", node_fail=True, never_started=True)
    for run in range(MAX_REQUEUES):
        assert _decisions(log) == [("JobPlaced", job)]
        log.append(refused.model_copy(update={"run": run}))
        assert _decisions(log) == [("JobRequeued", job)]
    assert _decisions(log) == [("JobPlaced", job)]
    log.append(refused.model_copy(update={"run": MAX_REQUEUES}))
    [ended] = [d for d in log.schedule() if isinstance(d, ev.JobFailed)]
    assert not ended.node_fail and f"requeued {MAX_REQUEUES} times already" in ended.message
    assert job not in log.state.running and job not in log.state.pending
