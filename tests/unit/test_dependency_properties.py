"""Invariants of dependencies over arbitrary logs: a job never starts before its dependency holds,
nothing stays pending for ever, and replay folds to the same state."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from conductor_contracts import dependencies as deps
from conductor_contracts import events as ev
from conductor_contracts.states import JobState
from tests.unit.scheduling import Log, node, replay, submitted

KINDS = ["after", "afterany", "afterok", "afternotok"]
OUTCOMES: dict[str, type[ev.Event]] = {"completed": ev.JobCompleted, "failed": ev.JobFailed, "timeout": ev.JobTimedOut}

steps = st.lists(
    st.one_of(
        # a job depending on up to three earlier jobs (indices into those submitted so far)
        st.tuples(
            st.just("submit"),
            st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 30)), max_size=3),
            st.booleans(),  # any_of
            st.booleans(),  # singleton
            st.booleans(),  # a no-op job
        ),
        st.tuples(st.just("finish"), st.integers(0, 30), st.sampled_from(sorted(OUTCOMES))),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("schedule")),
    ),
    max_size=50,
)


def _states(log: Log) -> dict[int, JobState]:
    """Each job's state as the log says, event by event."""
    states: dict[int, JobState] = {}
    for seq, event, _ in log.events:
        if isinstance(event, ev.JobSubmitted):
            states[seq] = JobState.PENDING
        elif isinstance(event, ev.JobPlaced):
            states[event.job_id] = JobState.RUNNING
        elif isinstance(event, ev.TERMINAL_JOB_EVENTS) and not states[event.job_id].is_terminal:
            states[event.job_id] = ev.final_state(event)
    return states


def _finish(log: Log, job_id: int, how: str) -> None:
    cls = OUTCOMES[how]
    code: dict[str, Any] = {"exit_code": 0 if how == "completed" else 1}
    log.append(cls(job_id=job_id, node="n0", **code))


def _run(plan: list[tuple[Any, ...]]) -> tuple[Log, list[int]]:
    log = Log()
    log.append(node("n0", 64, memory_mb=1_000_000))
    jobs: list[int] = []
    for step in plan:
        match step:
            case ("submit", conditions, any_of, singleton, noop):
                terms = [f"{kind}:{jobs[i % len(jobs)]}" for kind, i in conditions if jobs]
                if singleton:
                    terms.append("singleton")
                text = ("?" if any_of else ",").join(terms)
                dependency = deps.parse(text) if text else None
                jobs.append(log.append(submitted(name="same", dependency=dependency, noop=bool(noop))))
            case ("finish", index, how) if log.state.running:
                running = sorted(log.state.running)
                _finish(log, running[index % len(running)], str(how))
            case ("cancel", index) if jobs:
                log.append(ev.JobCancelRequested(job_id=jobs[index % len(jobs)]))
            case ("schedule",):
                log.schedule()
    return log, jobs


def _check_placements(log: Log) -> None:
    """At each placement, the job's dependency held on what the log said then."""
    states: dict[int, JobState] = {}
    submissions: dict[int, ev.JobSubmitted] = {}
    for seq, event, _ in log.events:
        if isinstance(event, ev.JobSubmitted):
            states[seq] = JobState.PENDING
            submissions[seq] = event
        elif isinstance(event, ev.JobPlaced) or (isinstance(event, ev.JobCompleted) and event.node is None):
            assert submissions[event.job_id].noop is isinstance(event, ev.JobCompleted), "a no-op job is never placed"
            dependency = submissions[event.job_id].dependency
            if dependency is not None:
                verdicts = []
                for c in dependency.conditions:
                    if c.kind is deps.Kind.SINGLETON:
                        earlier = [j for j, s in states.items() if j < event.job_id and not s.is_terminal]
                        verdicts.append(deps.Verdict.WAIT if earlier else deps.Verdict.HOLDS)
                    else:
                        verdicts.append(deps.settle(c.kind, states.get(c.job_id or 0)))
                holds = sum(v is deps.Verdict.HOLDS for v in verdicts)
                never = sum(v is deps.Verdict.NEVER for v in verdicts)
                assert deps.combine(holds, never, len(verdicts), any_of=dependency.any_of) is deps.Verdict.HOLDS
            states[event.job_id] = JobState.RUNNING if isinstance(event, ev.JobPlaced) else JobState.COMPLETED
        elif isinstance(event, ev.TERMINAL_JOB_EVENTS) and not states[event.job_id].is_terminal:
            states[event.job_id] = ev.final_state(event)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_a_job_starts_only_once_its_dependency_holds(plan: list[tuple[Any, ...]]) -> None:
    log, _ = _run(plan)
    _check_placements(log)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_nothing_stays_pending_for_ever(plan: list[tuple[Any, ...]]) -> None:
    log, jobs = _run(plan)
    for _ in range(2 * len(jobs) + 2):  # each round ends what runs; a chain of n settles in n rounds
        log.schedule()
        for job_id in sorted(log.state.running):
            _finish(log, job_id, "completed" if job_id % 2 else "failed")
    assert not log.state.pending
    assert all(state.is_terminal for state in _states(log).values())
    _check_placements(log)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_replay_folds_to_the_same_state(plan: list[tuple[Any, ...]]) -> None:
    log, _ = _run(plan)
    assert replay(log.events) == log.state
