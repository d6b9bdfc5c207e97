"""Traces across the separate processes of ``conductor up``: one job's spans from the gateway, the
scheduler and the executor in one trace, each a child of the one before it (the ``traceparent`` the
events carry from service to service), sent over OTLP/HTTP to a receiver of the test's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.otlp import ReceivedSpan, Receiver, otlp_receiver
from tests.system import System, conductor_up, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, Receiver]]:
    with otlp_receiver() as (receiver, endpoint):
        # Batches sent every 0.2 s instead of 5 s: the spans arrive while the test waits.
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        with conductor_up(tmp_path_factory.mktemp("traces"), node="traced", **env) as system:
            yield system, receiver


def _spans_of(receiver: Receiver, job_id: str) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in receiver.received() if str(s.attributes.get("conductor.job_id")) == job_id}


def test_one_trace_from_the_submit_to_the_outcome(traced: tuple[System, Receiver]) -> None:
    system, receiver = traced
    job_id = system.submit("echo traced")
    assert system.wait_state(job_id, "COMPLETED")["state"] == "COMPLETED"
    names = {
        "conductor.gateway.submit",
        "conductor.scheduler.place",
        "conductor.executor.start",
        "conductor.executor.outcome",
    }

    def all_there() -> dict[str, ReceivedSpan] | None:
        spans = _spans_of(receiver, job_id)
        return spans if names <= set(spans) else None

    spans = wait_for(all_there, 30, f"the spans of job {job_id}")
    submit, place = spans["conductor.gateway.submit"], spans["conductor.scheduler.place"]
    start, outcome = spans["conductor.executor.start"], spans["conductor.executor.outcome"]
    assert {s.trace_id for s in (submit, place, start, outcome)} == {submit.trace_id}
    assert (submit.service, place.service, start.service, outcome.service) == (
        "conductor-gateway",
        "conductor-scheduler",
        "conductor-executor",
        "conductor-executor",
    )
    assert place.parent_span_id == submit.span_id
    assert start.parent_span_id == place.span_id and outcome.parent_span_id == place.span_id
    assert outcome.attributes["conductor.outcome"] == "JobCompleted"
    assert place.attributes["conductor.node"] == "traced"


def test_a_workflow_is_one_trace_for_all_its_jobs(traced: tuple[System, Receiver]) -> None:
    system, receiver = traced
    user = system.http.post("/users/", json={"username": "tracer"})
    assert user.status_code == 200, user.text
    # No-op jobs (no script): the scheduler completes them, each in a span of the workflow's trace.
    jobs = [{"name": "first", "parent_indices": []}, {"name": "second", "parent_indices": [0]}]
    answer = system.http.post("/workflows/", json={"user_id": user.json()["id"], "jobs": jobs})
    assert answer.status_code == 200, answer.text
    created = answer.json()

    def completed() -> list[ReceivedSpan] | None:
        found = [_spans_of(receiver, j).get("conductor.scheduler.JobCompleted") for j in created["job_ids"]]
        return [s for s in found if s is not None] if None not in found else None

    ends = wait_for(completed, 60, "the scheduler's spans of the workflow's jobs")

    def submitted() -> list[ReceivedSpan] | None:
        # Each process sends its spans in its own batches: the gateway's may come after the scheduler's.
        found = [
            s
            for s in receiver.received()
            if s.name == "conductor.gateway.workflow"
            and s.attributes.get("conductor.workflow_id") == created["workflow_id"]
        ]
        return found or None

    [workflow] = wait_for(submitted, 60, "the gateway's span of the workflow")
    assert {s.trace_id for s in ends} == {workflow.trace_id}
    assert {s.parent_span_id for s in ends} == {workflow.span_id}
