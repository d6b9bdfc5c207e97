"""Dependencies and workflows in the scheduler's pure fold and policy."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from conductor_contracts import dependencies as deps
from conductor_contracts import events as ev
from conductor_contracts.states import PendingReason
from tests.unit.scheduling import Log, node, submitted

NEVER = PendingReason.DEPENDENCY_NEVER_SATISFIED.value


def _placed(log: Log) -> list[int]:
    return [job for job, _, _ in log.placements()]


def _finish(log: Log, job_id: int, outcome: type[ev.Event] = ev.JobCompleted) -> None:
    log.append(outcome(job_id=job_id, node="n0", exit_code=0 if outcome is ev.JobCompleted else 1))  # type: ignore[call-arg]


def _workflow(log: Log, parents: list[list[int]], *, noop: bool = False) -> list[int]:
    workflow_id = str(uuid.uuid4())
    user = str(uuid.uuid4())
    log.append(ev.WorkflowSubmitted(workflow_id=workflow_id, user_id=user, owner="u", job_count=len(parents)))
    return [
        log.append(submitted(workflow_id=workflow_id, workflow_index=i, parent_indices=tuple(p), noop=noop))
        for i, p in enumerate(parents)
    ]


def test_afterok_waits_for_completion_and_does_not_block_others() -> None:
    log = Log()
    log.append(node("n0", 4))
    a = log.append(submitted())
    b = log.append(submitted(dependency=deps.parse(f"afterok:{a}")))
    c = log.append(submitted())
    log.schedule()
    assert _placed(log) == [a, c]
    assert log.state.reasons[b] == PendingReason.DEPENDENCY.value
    _finish(log, a)
    log.schedule()
    assert _placed(log) == [a, c, b]


def test_failed_parent_cancels_the_whole_chain() -> None:
    log = Log()
    log.append(node("n0", 4))
    a = log.append(submitted())
    b = log.append(submitted(dependency=deps.parse(f"afterok:{a}")))
    c = log.append(submitted(dependency=deps.parse(f"afterok:{b}")))
    log.schedule()
    _finish(log, a, ev.JobFailed)
    first = log.schedule()
    assert [(type(d), d.job_id) for d in first] == [(ev.JobCancelled, b)]
    assert isinstance(first[0], ev.JobCancelled) and first[0].reason == NEVER
    assert "job 1" not in first[0].detail and f"job {a} ended FAILED" in first[0].detail
    second = log.schedule()
    assert [(type(d), d.job_id) for d in second] == [(ev.JobCancelled, c)]
    assert not log.state.pending
    assert _placed(log) == [a]


def test_afternotok_and_any_of() -> None:
    log = Log()
    log.append(node("n0", 4))
    a = log.append(submitted())
    on_fail = log.append(submitted(dependency=deps.parse(f"afternotok:{a}")))
    either = log.append(submitted(dependency=deps.parse(f"afternotok:{a}?afterok:{a}")))
    log.schedule()
    _finish(log, a)
    decisions = log.schedule()
    assert {(type(d), d.job_id) for d in decisions if not isinstance(d, ev.JobReasonChanged)} == {
        (ev.JobPlaced, either),
        (ev.JobCancelled, on_fail),
    }


def test_after_holds_once_the_job_started() -> None:
    log = Log()
    log.append(node("n0", 1))
    log.append(node("n1", 1))
    a = log.append(submitted())
    b = log.append(submitted(dependency=deps.parse(f"after:{a}")))
    log.schedule()  # places a
    log.schedule()  # a's placement is folded: b may go
    assert _placed(log) == [a, b]


def test_dependency_on_a_job_that_ended_long_ago_or_no_job() -> None:
    log = Log()
    log.append(node("n0", 2))
    a = log.append(submitted())
    log.schedule()
    _finish(log, a)
    ok = log.append(submitted(dependency=deps.parse(f"afterok:{a}")))
    missing = log.append(submitted(dependency=deps.parse(f"afterok:{a}:999999")))
    decisions = log.schedule()
    assert (ev.JobPlaced, ok) in [(type(d), d.job_id) for d in decisions]
    assert (ev.JobCancelled, missing) in [(type(d), d.job_id) for d in decisions]
    [cancelled] = [d for d in decisions if isinstance(d, ev.JobCancelled)]
    assert cancelled.detail.endswith(": 999999 is no job")


def test_a_dependency_doomed_at_submit_names_the_job_that_dooms_it() -> None:
    # It said "its dependency afterok:3:7 can never be satisfied", not which of them ended how.
    log = Log()
    log.append(node("n0", 2))
    a, b = log.append(submitted()), log.append(submitted())
    log.schedule()
    _finish(log, a)
    _finish(log, b, ev.JobFailed)
    doomed = log.append(submitted(dependency=deps.parse(f"afterok:{a}:{b}")))
    [cancelled] = [d for d in log.schedule() if isinstance(d, ev.JobCancelled) and d.job_id == doomed]
    assert cancelled.detail == f"its dependency afterok:{a}:{b} can never be satisfied: job {b} ended FAILED"


def test_singleton_waits_for_earlier_jobs_of_the_same_name_and_account() -> None:
    log = Log()
    log.append(node("n0", 4))
    a = log.append(submitted(name="nightly"))
    b = log.append(submitted(name="nightly", dependency=deps.parse("singleton")))
    other = log.append(submitted(name="other", dependency=deps.parse("singleton")))
    log.schedule()
    assert _placed(log) == [a, other]
    _finish(log, a, ev.JobFailed)
    log.schedule()
    assert _placed(log) == [a, other, b]


def test_cancel_of_a_held_job() -> None:
    log = Log()
    log.append(node("n0", 1))
    a = log.append(submitted())
    b = log.append(submitted(dependency=deps.parse(f"afterok:{a}")))
    log.append(ev.JobCancelRequested(job_id=b))
    decisions = log.schedule()
    assert (ev.JobCancelled, b) in [(type(d), d.job_id) for d in decisions]
    assert not log.state.holds.waiting


def test_diamond_workflow_runs_b_and_c_together_and_d_last() -> None:
    log = Log()
    log.append(node("n0", 4))
    a, b, c, d = _workflow(log, [[], [0], [0], [1, 2]])
    log.schedule()
    assert _placed(log) == [a]
    _finish(log, a)
    log.schedule()
    assert _placed(log) == [a, b, c]
    _finish(log, b)
    log.schedule()
    assert _placed(log) == [a, b, c]
    _finish(log, c)
    log.schedule()
    assert _placed(log) == [a, b, c, d]


def test_noop_workflow_completes_without_a_node() -> None:
    log = Log()  # no node at all: no-op jobs need none
    jobs = _workflow(log, [[], [0], [1]], noop=True)
    for job in jobs:  # one at a time: each waits for its parent
        assert [(type(d), d.job_id, getattr(d, "node", None)) for d in log.schedule()] == [(ev.JobCompleted, job, None)]
    assert not log.state.pending
    completed = [e.job_id for _, e, _ in log.events if isinstance(e, ev.JobCompleted)]
    assert completed == jobs


def test_fan_in_settles_by_counting() -> None:
    log = Log()
    log.append(node("n0", 64, memory_mb=100_000))
    jobs = _workflow(log, [[]] + [[0]] * 50 + [list(range(1, 51))])
    log.schedule()
    _finish(log, jobs[0])
    log.schedule()
    assert len(_placed(log)) == 51
    for job in jobs[1:-1]:
        _finish(log, job)
    log.schedule()
    assert _placed(log)[-1] == jobs[-1]


def test_noop_child_waits_for_a_real_parent() -> None:
    log = Log()
    log.append(node("n0", 2))
    workflow = str(uuid.uuid4())
    log.append(ev.WorkflowSubmitted(workflow_id=workflow, user_id=workflow, owner="u", job_count=2))
    real = log.append(submitted(workflow_id=workflow, workflow_index=0))
    noop = log.append(submitted(workflow_id=workflow, workflow_index=1, parent_indices=(0,), noop=True))
    assert [(type(d), d.job_id) for d in log.schedule()] == [(ev.JobPlaced, real)]
    assert [(type(d), d.job_id) for d in log.schedule()] == []
    _finish(log, real)
    assert [(type(d), d.job_id) for d in log.schedule()] == [(ev.JobCompleted, noop)]


def _reasons(decisions: Sequence[ev.Event]) -> dict[int, str]:
    return {d.job_id: d.reason for d in decisions if isinstance(d, ev.JobReasonChanged)}


def test_a_job_let_go_past_the_queue_depth_stops_showing_dependency() -> None:
    # Slurm clears the reason Dependency when the dependency is satisfied; the policy explains only
    # the first queue_depth jobs of a partition, so a job further back is said to wait for nothing.
    log = Log()
    log.append(node("n0", 1))
    a = log.append(submitted())
    fillers = [log.append(submitted()) for _ in range(3)]
    b = log.append(submitted(dependency=deps.parse(f"afterok:{a}")))
    log.schedule(queue_depth=1)
    assert _placed(log) == [a] and log.state.reasons[b] == PendingReason.DEPENDENCY.value
    _finish(log, a)
    first = log.schedule(queue_depth=1)
    assert _placed(log) == [a, fillers[0]]
    assert _reasons(first)[b] == PendingReason.NONE.value and b not in log.state.released
    assert b not in _reasons(log.schedule(queue_depth=1))  # said once


def test_a_job_let_go_within_the_queue_depth_gets_its_real_reason() -> None:
    log = Log()
    log.append(node("n0", 1))
    a = log.append(submitted())
    log.append(submitted())
    b = log.append(submitted(dependency=deps.parse(f"afterok:{a}")))
    log.schedule(queue_depth=100)
    _finish(log, a)
    assert _reasons(log.schedule(queue_depth=100))[b] == PendingReason.RESOURCES.value  # the core went to the other


def test_a_job_whose_dependency_holds_at_submission_stops_showing_dependency_past_the_depth() -> None:
    # The submission shows Dependency (fold and read model alike); a parent that had completed already
    # lets the job go at once, so no later event of the parent says so.
    log = Log()
    log.append(node("n0", 1))
    a = log.append(submitted())
    log.schedule(queue_depth=1)
    _finish(log, a)
    blocker = log.append(submitted())
    log.schedule(queue_depth=1)
    fillers = [log.append(submitted()) for _ in range(3)]
    b = log.append(submitted(dependency=deps.parse(f"afterok:{a}")))
    assert log.state.reasons[b] == PendingReason.DEPENDENCY.value
    assert _reasons(log.schedule(queue_depth=1))[b] == PendingReason.NONE.value
    assert _placed(log) == [a, blocker] and fillers[0] in log.state.pending
