import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ValidationError

from conductor_contracts import api, subjects
from conductor_contracts import events as ev
from conductor_contracts.api_workflows import WorkflowRequest
from conductor_contracts.catalogue import subject_patterns
from conductor_contracts.paths import expand_pattern, output_path, output_pattern_problem, path_problem

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
        ({"dependency": "afterok:one"}, "dependency"),
    ],
)
def test_bad_job_fields_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        api.SubmitRequest.model_validate({"job": SEED_JOB | change, "script": "true"})
    assert field in str(err.value)


LONG = "d" * 255


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"time_limit": "99999999"}, "time_limit", "at most 365 days"),
        ({"memory_per_node": "2048T"}, "memory_per_node", "at most 2147483647M"),
        ({"memory_per_node": "1" + "0" * 400 + "K"}, "memory_per_node", "at most 2147483647M"),
        ({"ntasks_per_node": 64, "cpus_per_task": 65}, "cpus_per_task", "4160 CPUs"),
        ({"standard_output": "out\x00.txt"}, "standard_output", "NUL"),
        ({"standard_error": "err\x00"}, "standard_error", "NUL"),
        ({"current_working_directory": "/tmp/\x00"}, "current_working_directory", "NUL"),
        ({"name": "a\x00b"}, "name", "NUL"),
        ({"account": "a\x00b"}, "account", "NUL"),
        ({"partition": "a\x00b"}, "partition", "NUL"),
        ({"name": "a\ud800"}, "name", "lone surrogate"),
        ({"account": "\udfff"}, "account", "lone surrogate"),
        ({"standard_output": "\ud800.txt"}, "standard_output", "lone surrogate"),
        ({"current_working_directory": "/\ud800"}, "current_working_directory", "lone surrogate"),
        ({"name": "a\tb"}, "name", "printable"),
        ({"name": "a\u200bb"}, "name", "printable"),
        ({"account": "a/b"}, "account", "no '/'"),
        ({"name": "x" * 201}, "name", "at most 200"),
        ({"current_working_directory": "/tmp/a\nb"}, "current_working_directory", "control character"),
        ({"current_working_directory": "/" + "d" * 256}, "current_working_directory", "at most 255"),
        ({"current_working_directory": ("/" + LONG) * 16}, "current_working_directory", "at most 4095"),
        ({"standard_output": "x" * 256}, "standard_output", "at most 255"),
        ({"standard_output": "%x-%x.out", "name": "n" * 200}, "standard_output", "once expanded"),
        ({"standard_error": "%u/" * 21 + "e", "account": "a" * 200}, "standard_error", "once expanded"),
        ({"standard_output": "o" * 240 + "%j"}, "standard_output", "19-digit job id"),
        ({"standard_output": "logs/"}, "standard_output", "must name a file"),
        ({"standard_output": "%x", "name": ".."}, "standard_output", "must name a file"),
        ({"environment": {"A": "x\x00"}}, "environment", "NUL"),
        ({"environment": {"A": "\ud800"}}, "environment", "lone surrogate"),
        ({"environment": {"A-B": "x"}}, "environment", "pattern"),
        ({"environment": {"1A": "x"}}, "environment", "pattern"),
        ({"environment": {"": "x"}}, "environment", "pattern"),
        ({"environment": {f"V{i}": "" for i in range(1025)}}, "environment", "at most 1024"),
        ({"environment": {"A": "x" * 200_000}}, "environment", "at most 131072"),
    ],
)
def test_values_no_downstream_part_can_hold_are_refused(change: dict[str, object], field: str, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        api.SubmitRequest.model_validate({"job": SEED_JOB | change, "script": "true"})
    [error] = err.value.errors()
    assert error["loc"][:2] == ("job", field)
    assert says in error["msg"]


@pytest.mark.parametrize(
    "change",
    [
        {"time_limit": "365-0", "memory_per_node": "2047T", "ntasks_per_node": 64, "cpus_per_task": 64},
        {"name": "n" * 200, "account": "é" * 127, "standard_output": "%x.out", "standard_error": "/var/log/%u"},
        {"current_working_directory": ("/" + LONG) * 15 + "/" + "d" * 200, "standard_output": "/o"},
        {"environment": {"_A1": "line one\nline two", "PATH": "/bin"}, "name": "Zürich job 1"},
    ],
)
def test_values_at_the_bounds_are_accepted(change: dict[str, object]) -> None:
    api.SubmitRequest.model_validate({"job": SEED_JOB | change, "script": "true"})


@pytest.mark.parametrize(("script", "says"), [("echo \x00", "NUL"), ("echo \ud800", "lone surrogate")])
def test_scripts_bash_cannot_read_are_refused(script: str, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        api.SubmitRequest.model_validate({"job": SEED_JOB, "script": script})
    [error] = err.value.errors()
    assert error["loc"] == ("script",) and says in error["msg"]


def test_the_fingerprint_is_of_the_request_not_of_how_it_was_written() -> None:
    def fingerprint(job: dict[str, object], script: str = "true") -> str:
        return api.SubmitRequest.model_validate({"job": job, "script": script}).fingerprint()

    same = fingerprint(SEED_JOB | {"environment": {"A": "1", "B": "2"}})
    assert same == fingerprint(dict(reversed((SEED_JOB | {"environment": {"B": "2", "A": "1"}}).items())))
    assert fingerprint(SEED_JOB) == fingerprint(SEED_JOB | {"partition": "default", "name": " test-job "})
    no_stderr = {k: v for k, v in SEED_JOB.items() if k != "standard_error"}
    assert fingerprint(no_stderr) == fingerprint(no_stderr | {"standard_error": ""})  # both join stderr to stdout
    assert fingerprint(SEED_JOB) != fingerprint(SEED_JOB, "false")
    assert fingerprint(SEED_JOB) != fingerprint(SEED_JOB | {"account": "user2"})


def test_the_bounds_are_documented_in_the_openapi_schema() -> None:
    fields = api.JobSpec.model_json_schema()["properties"]
    assert "365 days" in fields["time_limit"]["description"]
    assert "2147483647M" in fields["memory_per_node"]["description"]
    assert "4096" in fields["cpus_per_task"]["description"]
    assert "4095 bytes" in fields["standard_output"]["description"]
    assert "shell names" in fields["environment"]["description"]


def test_empty_script_is_rejected() -> None:
    for script in (" \n ", "\ufeff", "\ufeff\n"):  # a byte order mark alone failed 127 once run
        with pytest.raises(ValidationError, match="script is empty"):
            api.SubmitRequest.model_validate({"job": SEED_JOB, "script": script})


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
    ev.NodeDrainRequested(node="n1", reason="r"),
    ev.NodeDrainRequested(node="n1", reason="disk full", by_node=True),
    ev.NodeResumeRequested(node="n1"),
    ev.JobCompleted(job_id=1),
    ev.WorkflowSubmitted(workflow_id=str(uuid.UUID(int=1)), user_id=str(uuid.UUID(int=2)), owner="u", job_count=2),
    ev.UserCreated(user_id=str(uuid.UUID(int=2)), username="u"),
]


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.type)
def test_every_event_round_trips_and_has_a_subject(event: ev.Event) -> None:
    assert ev.decode(ev.encode(event)) == event
    subject = subjects.subject_for(event)
    assert subject.startswith("conductor.") and "*" not in subject and ">" not in subject


def _matches(pattern: str, subject: str) -> bool:
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or token not in ("*", have[i]):
            return False
    return len(want) == len(have)


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.type)
def test_compaction_covers_every_subject_but_users(event: ev.Event) -> None:
    """A new event on a subject no filter covers would never leave the log; a user must never leave it."""
    for by_scheduler in (False, True):
        subject = subjects.subject_for(event, by_scheduler=by_scheduler)
        compacted = [p for p in subjects.COMPACTED_SUBJECTS if _matches(p, subject)]
        kept = [p for p in subjects.KEPT_SUBJECTS if _matches(p, subject)]
        assert len(compacted) + len(kept) == 1, (subject, compacted, kept)
        assert bool(kept) == isinstance(event, ev.UserCreated)


def test_scheduler_decisions_live_under_the_fenced_subject() -> None:
    decisions: list[ev.Event] = [
        ev.JobPlaced(job_id=1, node="n", cores=(0,), memory_mb=1),
        ev.JobCancelled(job_id=1),
        ev.JobReasonChanged(job_id=1, reason="x"),
        ev.JobCompleted(job_id=1),
    ]
    assert all(subjects.is_scheduler_subject(subjects.subject_for(d, by_scheduler=True)) for d in decisions)
    assert not subjects.is_scheduler_subject(subjects.subject_for(ev.JobCancelled(job_id=1, node="n")))


def test_a_drain_says_who_asked_for_it_by_its_subject() -> None:
    # Subjects say who wrote an event: a node's executor publishes only under conductor.exec.<node>.
    by_operator = subjects.subject_for(ev.NodeDrainRequested(node="n1", reason="swap"))
    by_node = subjects.subject_for(ev.NodeDrainRequested(node="n1", reason="disk full", by_node=True))
    assert (by_operator, by_node) == ("conductor.gw.node.n1.drain", "conductor.exec.n1.node.drain")
    patterns = {"conductor.gw.node.{node}.drain", "conductor.exec.{node}.node.drain"}
    assert set(subject_patterns(ev.NodeDrainRequested)) == patterns


def test_outcomes_dedupe_per_job() -> None:
    first, again = ev.JobCompleted(job_id=7, node="n"), ev.JobCompleted(job_id=7, node="n")
    assert first.event_id != again.event_id
    assert subjects.dedupe_id(first) == subjects.dedupe_id(again)


def test_output_paths_are_checked_after_expansion() -> None:
    assert output_pattern_problem("out-%j.txt", name="n", account="a", cwd="/w") is None
    # %x adds up to 200 characters of a name to a component that looks short.
    problem = output_pattern_problem("%x%x.txt", name="n" * 200, account="a", cwd="/w")
    assert problem is not None and "once expanded" in problem
    assert path_problem("/" + "é" * 128) is not None  # 256 bytes, 128 characters
    assert path_problem("/" + "é" * 127) is None


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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("standard_output", "/dev/stderr"),
        ("standard_output", "/proc/self/fd/1"),
        ("standard_error", "/proc/self/environ"),
        ("standard_output", "../../proc/self/environ"),
        ("standard_output", "/sys/kernel/notes"),
        ("current_working_directory", "/proc/1"),
        ("current_working_directory", "/dev"),
        ("current_working_directory", "/dev/shm/jobs"),
        # A leading "//" survives POSIX normalisation and still names the root on Linux.
        ("current_working_directory", "//proc"),
        ("current_working_directory", "//sys/kernel"),
        ("standard_output", "//proc/self/environ"),
        ("standard_error", "//dev/stderr"),
    ],
)
def test_the_systems_own_files_are_no_job_paths(field: str, value: str) -> None:
    """Opened by the executor, they resolve in its context: its log, its environment."""
    with pytest.raises(ValidationError) as info:
        api.JobSpec.model_validate(SEED_JOB | {field: value})
    [error] = info.value.errors()
    assert error["loc"] == (field,) and "system's own files" in error["msg"]


def test_dev_null_stays_usable() -> None:
    assert api.JobSpec.model_validate(SEED_JOB | {"standard_output": "/dev/null"}).standard_output == "/dev/null"


def test_the_default_output_must_fit_under_the_working_directory() -> None:
    cwd = (("/" + "c" * 200) * 20 + "/" + "d" * 80)[:4095]
    job = {k: v for k, v in SEED_JOB.items() if k not in ("standard_output", "standard_error")}
    with pytest.raises(ValidationError, match=r"standard_output \(by default 'slurm-%j.out'\)"):
        api.JobSpec.model_validate(job | {"current_working_directory": cwd})


def test_every_optional_field_of_a_submit_takes_null() -> None:
    """``null`` for an optional field is the field left out: a 422 at worst, never an error that is
    not a validation error (``"dependency": null`` raised a TypeError, answered 500)."""
    optional = [name for name, field in api.JobSpec.model_fields.items() if not field.is_required()]
    assert "dependency" in optional
    for name in optional:
        body = {"job": SEED_JOB | {name: None}, "script": "#!/bin/bash\ntrue\n"}
        try:
            api.SubmitRequest.model_validate_json(json.dumps(body))
        except ValidationError:
            continue  # refused as bad input: a 422 with a message


def _errors(model: type[BaseModel], body: bytes) -> list[str]:
    with pytest.raises(ValidationError) as err:
        model.model_validate_json(body)
    assert err.value.error_count() == 1, "one error, whatever the number of bad entries"
    return [e["msg"] for e in err.value.errors()]


def test_thousands_of_bad_entries_are_one_error() -> None:
    """Each error pydantic collects and FastAPI lists costs microseconds on the gateway's event loop:
    a 4 MB body of bad entries held it 5-26 s, every other request waiting."""
    keys = b",".join(b'"k%x":0' % i for i in range(50_000))
    job = json.dumps(SEED_JOB).encode()
    unknown = _errors(api.SubmitRequest, b'{"job":' + job + b',"script":"true",' + keys + b"}")
    assert "unknown field 'k0', 'k1', 'k2', 'k3', 'k4' and 49995 more" in unknown[0]
    assert "the fields are job, script" in unknown[0]
    nested = _errors(api.SubmitRequest, b'{"job":' + job[:-1] + b"," + keys + b'},"script":"true"}')
    assert "unknown field 'k0'" in nested[0]
    names = b",".join(b'"-%x":"v"' % i for i in range(50_000))
    assert (
        "pattern"
        in _errors(api.SubmitRequest, b'{"job":' + job[:-1] + b',"environment":{' + names + b'}},"script":"true"}')[0]
    )
    flow = {"user_id": str(uuid.uuid4()), "jobs": [{"name": "j", "parent_indices": [-1] * 900} for _ in range(900)]}
    assert "greater than or equal to 0" in _errors(WorkflowRequest, json.dumps(flow).encode())[0]


def test_a_few_unknown_fields_are_named() -> None:
    (message,) = _errors(api.SubmitRequest, json.dumps({"job": SEED_JOB | {"nodes": 2}, "script": "true"}).encode())
    assert "unknown field 'nodes'; the fields are name, account" in message


def test_an_outcome_carries_its_run_s_start_in_utc_or_nothing() -> None:
    """An outcome stored before the fields existed decodes without a start; one with a start keeps it,
    in UTC; a pid the read model's column cannot hold does not decode (no consumer could store it)."""
    older = b'{"type":"JobCompleted","job_id":3,"node":"n","exit_code":0,"run":0,"occurred_at":"2026-01-01T00:00:00Z"}'
    plain = ev.decode(older)
    assert isinstance(plain, ev.JobCompleted) and plain.pid is None and plain.started_at is None
    east = datetime(2026, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    carried = ev.decode(ev.encode(ev.JobFailed(job_id=3, node="n", exit_code=1, pid=77, started_at=east)))
    assert isinstance(carried, ev.JobFailed) and carried.pid == 77
    assert carried.started_at == east and carried.started_at.tzinfo is UTC
    for pid in (-1, 2**31):
        with pytest.raises(ValidationError):
            ev.JobCompleted(job_id=3, node="n", pid=pid, started_at=east)
