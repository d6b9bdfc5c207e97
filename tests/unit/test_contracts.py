import pytest
from pydantic import ValidationError

from conductor_contracts import api, subjects
from conductor_contracts import events as ev
from conductor_contracts.paths import expand_pattern, output_path

SEED_JOB = {
    "name": "test-job",
    "account": "user1",
    "partition": "default",
    "ntasks_per_node": 1,
    "cpus_per_task": 4,
    "memory_per_node": "8G",
    "time_limit": "60",
    "current_working_directory": "/tmp/jobs",
    "standard_output": "stdout.txt",
    "standard_error": "stderr.txt",
}


def test_seed_payload_is_accepted_as_is() -> None:
    body = api.SubmitRequest.model_validate({"job": SEED_JOB, "script": '#!/bin/bash\necho "Hello World"\nsleep 10'})
    assert (body.job.cpus, body.job.memory_mb, body.job.time_limit_s) == (4, 8192, 3600)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"memory_per_node": "8X"}, "memory_per_node"),
        ({"time_limit": "abc"}, "time_limit"),
        ({"cpus_per_task": 0}, "cpus_per_task"),
        ({"ntasks_per_node": -1}, "ntasks_per_node"),
        ({"current_working_directory": "relative/dir"}, "current_working_directory"),
        ({"name": ""}, "name"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"dependency": "afterok:1"}, "dependency"),
    ],
)
def test_bad_job_fields_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        api.SubmitRequest.model_validate({"job": SEED_JOB | change, "script": "true"})
    assert field in str(err.value)


def test_empty_script_is_rejected() -> None:
    with pytest.raises(ValidationError, match="script is empty"):
        api.SubmitRequest.model_validate({"job": SEED_JOB, "script": " \n "})


ALL_EVENTS: list[ev.Event] = [
    ev.JobSubmitted(
        name="a",
        account="u",
        partition="p",
        ntasks_per_node=1,
        cpus_per_task=1,
        cpus=1,
        memory_mb=1,
        time_limit_s=None,
        working_directory="/",
        standard_output="",
        standard_error=None,
        script="true",
    ),
    ev.JobCancelRequested(job_id=1),
    ev.JobPlaced(job_id=1, node="n1", cores=(0,), memory_mb=1),
    ev.JobReasonChanged(job_id=1, reason="Resources"),
    ev.JobStarted(job_id=1, node="n1", pid=10),
    ev.JobCompleted(job_id=1, node="n1"),
    ev.JobFailed(job_id=1, node="n1", exit_code=2),
    ev.JobTimedOut(job_id=1, node="n1"),
    ev.JobOutOfMemory(job_id=1, node="n1"),
    ev.JobCancelled(job_id=1, node="n1"),
    ev.JobCancelled(job_id=1),
    ev.NodeRegistered(node="n1", cpus=2, memory_mb=10),
    ev.NodeLost(node="n1"),
    ev.NodeDrained(node="n1"),
    ev.WorkflowSubmitted(name="w", owner="u", jobs=(ev.WorkflowJob(job_id=1),)),
]


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.type)
def test_every_event_round_trips_and_has_a_subject(event: ev.Event) -> None:
    assert ev.decode(ev.encode(event)) == event
    subject = subjects.subject_for(event)
    assert subject.startswith("conductor.") and "*" not in subject and ">" not in subject


def test_scheduler_decisions_live_under_the_fenced_subject() -> None:
    decisions: list[ev.Event] = [
        ev.JobPlaced(job_id=1, node="n", cores=(0,), memory_mb=1),
        ev.JobCancelled(job_id=1),
        ev.JobReasonChanged(job_id=1, reason="x"),
    ]
    assert all(subjects.is_scheduler_subject(subjects.subject_for(d, by_scheduler=True)) for d in decisions)
    assert not subjects.is_scheduler_subject(subjects.subject_for(ev.JobCancelled(job_id=1, node="n")))


def test_outcomes_dedupe_per_job() -> None:
    first, again = ev.JobCompleted(job_id=7, node="n"), ev.JobCompleted(job_id=7, node="n")
    assert first.event_id != again.event_id
    assert subjects.dedupe_id(first) == subjects.dedupe_id(again)


def test_slurm_filename_patterns() -> None:
    assert expand_pattern("out-%j-%x-%u.%%", job_id=5, name="n", account="a") == "out-5-n-a.%"
    assert output_path(None, job_id=5, name="n", account="a", cwd="/w") == "/w/slurm-5.out"
    assert output_path("/abs/%j.log", job_id=5, name="n", account="a", cwd="/w") == "/abs/5.log"


def test_json_logs_carry_extras_but_not_colour_codes() -> None:
    import json
    import logging

    from conductor_platform.logging import JsonFormatter

    record = logging.makeLogRecord({"msg": "placed", "job_id": 7, "color_message": "\x1b[1mplaced\x1b[0m"})
    line = json.loads(JsonFormatter("scheduler").format(record))
    assert line["msg"] == "placed" and line["job_id"] == 7 and line["service"] == "scheduler"
    assert "color_message" not in line
