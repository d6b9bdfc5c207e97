"""The scheduler reads the log through a server-side filter (``FOLDED_SUBJECTS``): every event the
fold can act on must be on a subject it reads, and what it leaves out must change nothing in the
fold. One sample of every event type: a type added to the contracts fails here until it is placed."""

from __future__ import annotations

import copy
from typing import get_args

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_scheduler.service import FOLDED_SUBJECTS
from conductor_scheduler.state import evolve
from tests.unit.scheduling import Log, node, submitted

USER = "6f1c2b0e-3d4a-4f5b-8c6d-7e8f9a0b1c2d"
SAMPLES: list[ev.Event] = [
    submitted(),
    ev.JobCancelRequested(job_id=2),
    ev.JobPlaced(job_id=2, node="n1", cores=(0,), memory_mb=100),
    ev.JobReasonChanged(job_id=2, reason="Priority"),
    ev.JobStarted(job_id=2, node="n1", pid=7),
    ev.JobCompleted(job_id=2, node="n1"),
    ev.JobCompleted(job_id=2),  # a no-op job, completed by the scheduler
    ev.JobFailed(job_id=2, node="n1", exit_code=1),
    ev.JobTimedOut(job_id=2, node="n1"),
    ev.JobOutOfMemory(job_id=2, node="n1"),
    ev.JobCancelled(job_id=2, node="n1"),
    ev.JobCancelled(job_id=2),
    ev.JobRequeued(job_id=2, node="n1", run=0, reason="lost"),
    node("n1", 2),
    ev.NodeLost(node="n1", reason="silent"),
    ev.NodeDrained(node="n1"),
    ev.NodeDrainRequested(node="n1", reason="maintenance"),
    ev.NodeResumeRequested(node="n1"),
    ev.UserCreated(user_id=USER, username="ann"),
    ev.WorkflowSubmitted(workflow_id=USER, user_id=USER, owner="ann", job_count=1),
]
LEFT_OUT = (ev.JobStarted,)


def _matches(subject: str, pattern: str) -> bool:
    tokens, wanted = subject.split("."), pattern.split(".")
    for i, want in enumerate(wanted):
        if want == ">":
            return len(tokens) > i
        if i >= len(tokens) or (want != "*" and want != tokens[i]):
            return False
    return len(tokens) == len(wanted)


def _subject(event: ev.Event) -> str:
    by_scheduler = isinstance(event, ev.JobCancelled | ev.JobFailed) and event.node is None
    return subjects.subject_for(event, by_scheduler=by_scheduler)


def test_every_event_type_has_a_sample() -> None:
    union = get_args(get_args(ev.Event)[0])
    assert {type(e) for e in SAMPLES} == set(union)


def test_the_fold_reads_every_subject_it_acts_on() -> None:
    for event in SAMPLES:
        read = [p for p in FOLDED_SUBJECTS if _matches(_subject(event), p)]
        assert len(read) == (0 if isinstance(event, LEFT_OUT) else 1), (event.type, _subject(event), read)


def test_what_is_left_out_changes_nothing_in_the_fold() -> None:
    log = Log()
    log.append(node("n1", 2))
    job = log.append(submitted())
    log.schedule()
    for event in SAMPLES:
        if isinstance(event, LEFT_OUT):
            before = copy.deepcopy(log.state)
            evolve(log.state, 99, event.model_copy(update={"job_id": job}))
            before.last_seq = 99
            assert log.state == before
