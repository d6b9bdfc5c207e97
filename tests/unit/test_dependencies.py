"""sbatch's dependency syntax and how each condition settles."""

from __future__ import annotations

import pytest

from conductor_contracts import dependencies as deps
from conductor_contracts.dependencies import Kind, Verdict
from conductor_contracts.states import JobState


def test_all_of_groups_ids_by_kind() -> None:
    d = deps.parse("afterok:12:13,afterany:14,singleton")
    assert not d.any_of
    assert [(c.kind, c.job_id) for c in d.conditions] == [
        (Kind.AFTEROK, 12),
        (Kind.AFTEROK, 13),
        (Kind.AFTERANY, 14),
        (Kind.SINGLETON, None),
    ]
    assert str(d) == "afterok:12:13,afterany:14,singleton"
    assert d.job_ids == [12, 13, 14]


def test_any_of() -> None:
    d = deps.parse("afterok:12?afternotok:13")
    assert d.any_of
    assert str(d) == "afterok:12?afternotok:13"


def test_duplicates_are_one_condition() -> None:
    assert len(deps.parse("afterok:5:5,afterok:5").conditions) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("afterok:1,afterany:2?after:3", "not both"),
        ("afterok", "takes job ids"),
        ("afterok:", "takes job ids"),
        ("afterok:1::2", "is not a job id"),
        ("afterok:abc", "is not a job id"),
        ("afterok:0", "is not a job id"),
        ("afterok:" + "9" * 500, "is not a job id"),
        ("afterok:٣", "is not a job id"),
        ("after:12+5", "not supported"),
        ("aftercorr:12", "not supported"),
        ("before:12", "unknown dependency type"),
        ("singleton:12", "takes no job ids"),
        ("afterok:1:" + ":".join(str(i) for i in range(2, 1100)), "at most"),
    ],
)
def test_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        deps.parse(text)


@pytest.mark.parametrize(
    ("kind", "state", "verdict"),
    [
        (Kind.AFTER, JobState.PENDING, Verdict.WAIT),
        (Kind.AFTER, JobState.RUNNING, Verdict.HOLDS),
        (Kind.AFTER, JobState.CANCELLED, Verdict.HOLDS),
        (Kind.AFTERANY, JobState.RUNNING, Verdict.WAIT),
        (Kind.AFTERANY, JobState.FAILED, Verdict.HOLDS),
        (Kind.AFTEROK, JobState.RUNNING, Verdict.WAIT),
        (Kind.AFTEROK, JobState.COMPLETED, Verdict.HOLDS),
        (Kind.AFTEROK, JobState.TIMEOUT, Verdict.NEVER),
        (Kind.AFTEROK, JobState.NODE_FAIL, Verdict.NEVER),
        (Kind.AFTERNOTOK, JobState.COMPLETED, Verdict.NEVER),
        (Kind.AFTERNOTOK, JobState.OUT_OF_MEMORY, Verdict.HOLDS),
        (Kind.AFTEROK, None, Verdict.NEVER),
    ],
)
def test_settle(kind: Kind, state: JobState | None, verdict: Verdict) -> None:
    assert deps.settle(kind, state) is verdict


def test_combine() -> None:
    assert deps.combine(2, 0, 2, any_of=False) is Verdict.HOLDS
    assert deps.combine(1, 0, 2, any_of=False) is Verdict.WAIT
    assert deps.combine(1, 1, 2, any_of=False) is Verdict.NEVER
    assert deps.combine(1, 1, 2, any_of=True) is Verdict.HOLDS
    assert deps.combine(0, 1, 2, any_of=True) is Verdict.WAIT
    assert deps.combine(0, 2, 2, any_of=True) is Verdict.NEVER
