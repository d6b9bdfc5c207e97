"""Events that would corrupt the scheduler's fold do not decode: every consumer skips them as
events it cannot apply, instead of giving a node room it does not have."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from conductor_contracts import events as ev
from tests.unit.scheduling import node, submitted


@pytest.mark.parametrize(
    "update",
    [{"cpus": 0}, {"cpus": -4}, {"memory_mb": -1000}, {"memory_mb": 0}, {"time_limit_s": 0}, {"cpus_per_task": 0}],
)
def test_a_job_of_no_or_negative_size_does_not_decode(update: dict[str, int]) -> None:
    raw = submitted().model_copy(update=update).model_dump_json().encode()
    with pytest.raises(ValidationError):
        ev.decode(raw)


@pytest.mark.parametrize("update", [{"cpus": 0}, {"memory_mb": -1}, {"cpus": 10**9}])
def test_a_node_of_no_or_negative_size_does_not_decode(update: dict[str, int]) -> None:
    raw = node("n1", 4).model_copy(update=update).model_dump_json().encode()
    with pytest.raises(ValidationError):
        ev.decode(raw)


def test_a_placement_on_a_negative_core_or_memory_does_not_decode() -> None:
    for bad in ({"cores": (-1,)}, {"memory_mb": -5}):
        raw = ev.JobPlaced(job_id=2, node="n1", cores=(0,), memory_mb=1).model_copy(update=bad).model_dump_json()
        with pytest.raises(ValidationError):
            ev.decode(raw.encode())


def test_huge_sizes_still_decode_the_fold_holds_them() -> None:
    job = submitted().model_copy(update={"memory_mb": 2**40, "time_limit_s": 99999999})
    assert ev.decode(job.model_dump_json().encode()) == job


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_time_without_a_utc_date_does_not_decode(when: str) -> None:
    data = submitted().model_dump(mode="json") | {"occurred_at": when}
    with pytest.raises(ValidationError, match="no date in UTC"):
        ev.decode(json.dumps(data).encode())


def test_times_are_kept_in_utc() -> None:
    data = submitted().model_dump(mode="json") | {"occurred_at": "2026-01-01T12:00:00+02:00"}
    assert ev.decode(json.dumps(data).encode()).occurred_at.isoformat() == "2026-01-01T10:00:00+00:00"
    naive = submitted().model_dump(mode="json") | {"occurred_at": "2026-01-01T12:00:00"}
    assert ev.decode(json.dumps(naive).encode()).occurred_at.isoformat() == "2026-01-01T12:00:00+00:00"


def test_every_outcome_has_its_final_state_and_type_name() -> None:
    outcomes: list[tuple[ev.TerminalJobEvent, str]] = [
        (ev.JobCompleted(job_id=1, node="n"), "COMPLETED"),
        (ev.JobFailed(job_id=1, node="n", exit_code=1), "FAILED"),
        (ev.JobFailed(job_id=1, node="n", exit_code=None, node_fail=True), "NODE_FAIL"),
        (ev.JobTimedOut(job_id=1, node="n"), "TIMEOUT"),
        (ev.JobOutOfMemory(job_id=1, node="n"), "OUT_OF_MEMORY"),
        (ev.JobCancelled(job_id=1), "CANCELLED"),
    ]
    assert [ev.final_state(e).value for e, _ in outcomes] == [state for _, state in outcomes]
    assert {e.type for e, _ in outcomes} == ev.TERMINAL_TYPES
