"""The job directory's memory: bounded, and one shared context for the many jobs of one account."""

from __future__ import annotations

from conductor_contracts.public import JobContext
from conductor_platform.jobs import JobDirectory


def test_jobs_of_one_account_share_one_context() -> None:
    jobs = JobDirectory(capacity=10)
    for job_id in range(1, 6):
        jobs.remember(job_id, JobContext("alice", None))  # a new object each time, as decoded
    contexts = {id(context) for context in jobs.known.values()}
    assert len(contexts) == 1
    assert jobs.known[3] == JobContext("alice", None)


def test_stays_within_its_capacity() -> None:
    jobs = JobDirectory(capacity=3)
    for job_id in range(1, 11):
        jobs.remember(job_id, JobContext(f"account-{job_id}", f"wf-{job_id}"))
    assert list(jobs.known) == [8, 9, 10]
    assert len(jobs.shared) <= 3
    assert jobs.known[9] == JobContext("account-9", "wf-9")
