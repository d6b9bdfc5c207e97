from datetime import UTC, datetime, timedelta

import pytest

from conductor_contracts import events as ev
from conductor_contracts.text import printable
from conductor_projector.operations import (
    ACTIVE,
    INDEXED_TEXT_BYTES,
    InsertJob,
    Operation,
    Undecodable,
    UpdateJob,
    UpdateNode,
    UpsertNode,
    decode,
    fold_jobs,
    latencies,
    sanitize,
    sanitized_submission,
    to_operations,
    unstorable,
)
from tests.unit.scheduling import node, submitted

T = datetime(2026, 1, 1, tzinfo=UTC)
S = T - timedelta(seconds=2)


def test_submission_inserts_a_pending_job_with_resolved_files() -> None:
    [op] = to_operations(9, submitted(cpus=2).model_copy(update={"standard_output": "out-%j"}))
    assert isinstance(op, InsertJob)
    assert op.values["job_id"] == 9 and op.values["state"] == "PENDING" and op.values["cpus"] == 2
    assert op.values["standard_output"] == "/tmp/out-9"


RUNNING = ("RUNNING",)  # what a node reports on: a pending job was never placed on it


@pytest.mark.parametrize(
    ("event", "values", "only_in"),
    [
        (ev.JobCancelRequested(job_id=1), {"cancel_requested": True}, ACTIVE),
        (
            ev.JobPlaced(job_id=1, node="n", cores=(0, 1), memory_mb=5, occurred_at=T),
            {
                "state": "RUNNING",
                "node": "n",
                "cores": [0, 1],
                "reason": None,
                "reason_detail": None,
                "placed_time": T,
            },
            ("PENDING",),
        ),
        (
            ev.JobReasonChanged(job_id=1, reason="Resources", detail="d"),
            {"reason": "Resources", "reason_detail": "d"},
            ("PENDING",),
        ),
        (ev.JobStarted(job_id=1, node="n", pid=5, occurred_at=T), {"start_time": T, "pid": 5}, RUNNING),
        (
            ev.JobCompleted(job_id=1, node="n", occurred_at=T),
            {"state": "COMPLETED", "end_time": T, "exit_code": 0, "reason": None, "reason_detail": None},
            RUNNING,
        ),
        (
            ev.JobFailed(job_id=1, node="n", exit_code=3, occurred_at=T),
            {"state": "FAILED", "end_time": T, "exit_code": 3, "reason": None, "reason_detail": None, "message": None},
            RUNNING,
        ),
        (  # a short run: its start came with its outcome, no JobStarted before it
            ev.JobTimedOut(job_id=1, node="n", exit_code=143, pid=9, started_at=S, occurred_at=T),
            {
                "state": "TIMEOUT",
                "end_time": T,
                "exit_code": 143,
                "reason": None,
                "reason_detail": None,
                "start_time": S,
                "pid": 9,
            },
            RUNNING,
        ),
        (
            ev.JobFailed(job_id=1, node="n", exit_code=None, message="lost", node_fail=True, occurred_at=T),
            {
                "state": "NODE_FAIL",
                "end_time": T,
                "exit_code": None,
                "reason": None,
                "reason_detail": None,
                "message": "lost",
            },
            RUNNING,
        ),
        (
            ev.JobTimedOut(job_id=1, node="n", exit_code=143, occurred_at=T),
            {"state": "TIMEOUT", "end_time": T, "exit_code": 143, "reason": None, "reason_detail": None},
            RUNNING,
        ),
        (
            ev.JobOutOfMemory(job_id=1, node="n", occurred_at=T),
            {"state": "OUT_OF_MEMORY", "end_time": T, "exit_code": None, "reason": None, "reason_detail": None},
            RUNNING,
        ),
        (
            ev.JobCancelled(job_id=1, occurred_at=T),
            {"state": "CANCELLED", "end_time": T, "exit_code": None, "reason": None, "reason_detail": None},
            ACTIVE,
        ),
    ],
    ids=lambda v: getattr(v, "type", None) or "",
)
def test_job_events_update_only_jobs_still_in_the_right_state(
    event: ev.Event, values: dict[str, object], only_in: tuple[str, ...]
) -> None:
    run = None if getattr(event, "node", None) is None else getattr(event, "run", None)
    requeues = isinstance(event, ev.JobFailed) and event.node_fail
    assert to_operations(5, event) == [UpdateJob(1, values, only_in, run=run, unless_requeue=requeues)]


def test_node_events() -> None:
    [up] = to_operations(1, node("n1", 4))
    assert isinstance(up, UpsertNode) and up.values["state"] == "UP" and up.values["cpus"] == 4
    assert to_operations(2, ev.NodeLost(node="n1")) == [UpdateNode("n1", {"state": "DOWN", "reason": "lost"})]
    drain = ev.NodeDrainRequested(node="n1", reason="disk")
    drained = {"state": "DRAIN", "reason": "disk", "drain": "disk"}
    assert to_operations(3, drain) == [UpdateNode("n1", drained, unless_down=True)]
    resumed = {"state": "UP", "reason": None, "drain": None}
    assert to_operations(4, ev.NodeResumeRequested(node="n1")) == [UpdateNode("n1", resumed, unless_down=True)]
    assert to_operations(5, ev.NodeDrained(node="n1")) == []  # as in the scheduler's fold


def test_a_requeued_job_runs_again_and_reports_of_its_old_run_change_nothing() -> None:
    rows: dict[int, dict[str, object]] = {}
    columns = (*COLUMNS, "cpus", "memory_mb", "restarts", "cores", "pid", "start_time", "reason_detail")
    events: list[tuple[int, ev.Event]] = [
        (1, submitted(cpus=2, memory_mb=300, requeue=True)),
        (2, ev.JobPlaced(job_id=1, node="old", cores=(0, 1), memory_mb=300)),
        (3, ev.JobRequeued(job_id=1, node="old", run=0, reason="node old was lost")),
        (4, ev.JobCompleted(job_id=1, node="old", run=0)),  # the lost node's executor, back
        (5, ev.JobPlaced(job_id=1, node="new", cores=(0, 1), memory_mb=300, run=1)),
        (6, ev.JobFailed(job_id=1, node="old", exit_code=1, run=0)),
    ]
    _, nodes = fold_jobs(rows, [op for seq, e in events for op in to_operations(seq, e)], columns)
    row = rows[1]
    assert (row["state"], row["node"], row["restarts"]) == ("RUNNING", "new", 1)
    assert {name: (a.cpus, a.memory_mb) for name, a in nodes.items()} == {"old": (0, 0), "new": (2, 300)}
    _, nodes = fold_jobs(rows, to_operations(7, ev.JobCompleted(job_id=1, node="new", run=1)), columns)
    assert row["state"] == "COMPLETED" and nodes["new"].cpus == -2


COLUMNS: tuple[str, ...] = ("job_id", "state", "reason", "exit_code", "node", "name")


def _fold(rows: dict[int, dict[str, object]], events: list[tuple[int, ev.Event]]) -> set[int]:
    changed, _ = fold_jobs(rows, [op for seq, e in events for op in to_operations(seq, e)], COLUMNS)
    return changed


def test_a_node_s_report_on_a_job_never_placed_there_changes_nothing() -> None:
    # As in the scheduler's fold: an executor that says it ended (or started) a pending job was never
    # given it; the read model would show an end the scheduler does not know of.
    rows: dict[int, dict[str, object]] = {}
    changed = _fold(
        rows,
        [
            (1, submitted()),
            (2, ev.JobStarted(job_id=1, node="n", pid=7)),
            (3, ev.JobFailed(job_id=1, node="n", exit_code=None, message="lost", node_fail=True)),
            (4, ev.JobCompleted(job_id=1, node="n")),
        ],
    )
    pending = dict(rows[1])
    assert changed == {1} and pending["state"] == "PENDING" and pending["node"] is None
    _fold(
        rows, [(5, ev.JobPlaced(job_id=1, node="n", cores=(0,), memory_mb=1)), (6, ev.JobCancelled(job_id=1, node="n"))]
    )
    assert rows[1]["state"] == "CANCELLED"  # the scheduler's end of a run on a lost node


def test_a_running_job_holds_its_node_s_cpus_and_memory() -> None:
    rows: dict[int, dict[str, object]] = {}
    events: list[tuple[int, ev.Event]] = [
        (1, submitted(cpus=2, memory_mb=300)),
        (2, submitted(cpus=1, memory_mb=100)),
        (3, ev.JobPlaced(job_id=1, node="n", cores=(0, 1), memory_mb=300)),
        (4, ev.JobPlaced(job_id=2, node="m", cores=(0,), memory_mb=100)),
        (5, ev.JobCompleted(job_id=2, node="m")),
        (6, ev.JobCompleted(job_id=2, node="m")),  # a repeated outcome frees nothing twice
    ]
    ops = [op for seq, e in events for op in to_operations(seq, e)]
    _, nodes = fold_jobs(rows, ops, (*COLUMNS, "cpus", "memory_mb"))
    assert {k: (v.cpus, v.memory_mb) for k, v in nodes.items()} == {"n": (2, 300), "m": (0, 0)}


def test_fold_follows_the_state_machine() -> None:
    rows: dict[int, dict[str, object]] = {}
    changed = _fold(
        rows,
        [
            (1, submitted()),
            (2, ev.JobReasonChanged(job_id=1, reason="Resources")),
            (3, ev.JobPlaced(job_id=1, node="n", cores=(0,), memory_mb=1)),
            (4, ev.JobReasonChanged(job_id=1, reason="Priority")),  # a running job has no reason
            (5, ev.JobFailed(job_id=1, node="n", exit_code=2)),
            (6, ev.JobCancelled(job_id=1, node="n")),  # too late: terminal states never change
        ],
    )
    assert changed == {1}
    assert (rows[1]["state"], rows[1]["exit_code"], rows[1]["reason"], rows[1]["node"]) == ("FAILED", 2, None, "n")


def test_fold_leaves_stored_rows_alone_unless_an_update_applies() -> None:
    stored = {"job_id": 7, "state": "COMPLETED", "reason": None, "exit_code": 0, "node": "n", "name": "kept"}
    rows = {7: dict(stored)}
    assert _fold(rows, [(7, submitted()), (9, ev.JobCancelled(job_id=7))]) == set()
    assert rows[7] == stored
    assert _fold(rows, [(10, ev.JobCompleted(job_id=99, node="n"))]) == set()  # unknown job: nothing


def test_a_submission_postgres_cannot_hold_is_made_storable_and_says_what_changed() -> None:
    bad = submitted().model_copy(
        update={
            "name": "x" * 5000,
            "working_directory": "/tmp/a\x00b",
            "environment": {"K\x00": "v\ud800"},
            "time_limit_s": 99999999 * 60,
            "memory_mb": -(2**40),
        }
    )
    clean, notes = sanitize(bad)
    assert len(clean.name.encode()) == INDEXED_TEXT_BYTES and clean.working_directory == "/tmp/a\ufffdb"
    assert clean.environment == {"K\ufffd": "v\ufffd"}
    assert (clean.time_limit_s, clean.memory_mb) == (2**31 - 1, -(2**31))
    assert [n.split()[0] for n in notes] == ["name", "working_directory", "environment", "memory_mb", "time_limit_s"]
    row = sanitized_submission(7, bad)
    assert row is not None and all(unstorable(op) is None for op in [row])
    assert "working_directory" in row.values["message"] and row.values["standard_output"] == "/tmp/a\ufffdb/slurm-7.out"
    assert sanitize(submitted())[1] == []
    assert sanitized_submission(7, submitted()) is None  # nothing to change: the fault is elsewhere


@pytest.mark.parametrize(
    ("op", "problem"),
    [
        (to_operations(3, submitted())[0], None),
        (UpdateJob(3, {"pid": 2**31}), "pid 2147483648 is out of range for jobs.pid (int32)"),
        (UpdateJob(2**63, {"pid": 1}), "job_id 9223372036854775808 is out of range for jobs.job_id (int64)"),
        (UpdateJob(3, {"message": "a\x00"}), "message holds NUL or a lone surrogate, which jobs.message cannot"),
        (UpdateJob(3, {"state": "X" * 33}), "state is longer than the 32 characters of jobs.state"),
        (UpdateNode("n\x00"), "name holds NUL or a lone surrogate, which nodes.name cannot"),
        (UpdateJob(3, {"environment": {"a": "\x00"}}), None),  # JSON holds it escaped
        (
            UpsertNode({"name": "n" * 2000, "cpus": 1}),
            "name is over the 1024 bytes an indexed column such as nodes.name is given",
        ),
    ],
)
def test_unstorable_values_are_found_before_anything_is_written(op: Operation, problem: str | None) -> None:
    assert unstorable(op) == problem


def test_bytes_that_are_no_event_decode_to_undecodable_and_print_escaped() -> None:
    registered = node("n1", 2)
    assert decode("s", ev.encode(registered)) == registered
    garbage = decode("s", b"\x00\xff{")
    assert isinstance(garbage, Undecodable) and garbage.subject == "s" and "JSON" in garbage.error
    assert printable(b"\x00\xffok", 100) == "\\x00\\xffok"
    assert printable("a\ud800", 100) == "a\\ud800"
    assert printable("x" * 20, 5) == "xxxxx... (20 characters)"


def test_a_requeue_job_whose_node_failed_waits_for_its_requeue() -> None:
    rows: dict[int, dict[str, object]] = {}
    columns = (*COLUMNS, "cpus", "memory_mb", "restarts", "requeue", "cores", "pid", "start_time", "reason_detail")
    events: list[tuple[int, ev.Event]] = [
        (1, submitted(requeue=True)),
        (2, submitted()),
        (3, ev.JobPlaced(job_id=1, node="n", cores=(0,), memory_mb=100)),
        (4, ev.JobPlaced(job_id=2, node="n", cores=(1,), memory_mb=100)),
        (5, ev.JobFailed(job_id=1, node="n", exit_code=None, node_fail=True, message="fenced")),
        (6, ev.JobFailed(job_id=2, node="n", exit_code=None, node_fail=True, message="fenced")),
    ]
    fold_jobs(rows, [op for seq, e in events for op in to_operations(seq, e)], columns)
    assert (rows[1]["state"], rows[2]["state"]) == ("RUNNING", "NODE_FAIL")
    fold_jobs(rows, to_operations(7, ev.JobRequeued(job_id=1, node="n", run=0)), columns)
    assert (rows[1]["state"], rows[1]["restarts"]) == ("PENDING", 1)


def test_a_job_its_node_refused_before_it_started_waits_for_its_requeue_requeue_or_not() -> None:
    rows: dict[int, dict[str, object]] = {}
    columns = (*COLUMNS, "cpus", "memory_mb", "restarts", "requeue", "cores", "pid", "start_time", "reason_detail")
    refused = ev.JobFailed(job_id=1, node="n", exit_code=None, node_fail=True, never_started=True, message="no")
    events: list[tuple[int, ev.Event]] = [
        (1, submitted()),
        (2, ev.JobPlaced(job_id=1, node="n", cores=(0,), memory_mb=100)),
        (3, refused),
    ]
    fold_jobs(rows, [op for seq, e in events for op in to_operations(seq, e)], columns)
    assert rows[1]["state"] == "RUNNING"  # not NODE_FAIL (nor FAILED, as it was): it runs again
    fold_jobs(rows, to_operations(4, ev.JobRequeued(job_id=1, node="n", run=0, reason="refused")), columns)
    assert (rows[1]["state"], rows[1]["restarts"], rows[1]["reason_detail"]) == ("PENDING", 1, "refused")


def test_a_requeue_job_failed_by_the_scheduler_past_its_requeues_ends_failed() -> None:
    # What the policy decides once a requeue job's runs were lost CONDUCTOR_MAX_REQUEUES times: a
    # JobFailed that is not node_fail, which the read model takes, not waits past for a requeue.
    rows: dict[int, dict[str, object]] = {}
    columns = (*COLUMNS, "cpus", "memory_mb", "restarts", "requeue", "cores", "pid", "start_time", "reason_detail")
    events: list[tuple[int, ev.Event]] = [
        (1, submitted(requeue=True)),
        (2, ev.JobPlaced(job_id=1, node="n", cores=(0,), memory_mb=100)),
        (3, ev.JobFailed(job_id=1, node="n", exit_code=None, node_fail=True, message="supervisor gone")),
    ]
    final = ev.JobFailed(job_id=1, node="n", exit_code=None, message="requeued 0 times already, the most allowed")
    fold_jobs(rows, [op for seq, e in [*events, (4, final)] for op in to_operations(seq, e)], columns)
    assert (rows[1]["state"], rows[1]["message"]) == ("FAILED", final.message)


def test_latencies_of_the_jobs_a_batch_started_and_ended() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows: dict[int, dict[str, object]] = {}
    columns = (*COLUMNS, "cpus", "memory_mb", "submit_time", "placed_time", "start_time", "end_time", "restarts", "pid")
    events: list[tuple[int, ev.Event]] = [
        (1, submitted(occurred_at=t0)),
        (2, ev.JobPlaced(job_id=1, node="n", cores=(0,), memory_mb=100, occurred_at=t0 + timedelta(seconds=1.5))),
        (3, ev.JobStarted(job_id=1, node="n", pid=5, occurred_at=t0 + timedelta(seconds=2))),
    ]
    changed, _ = fold_jobs(rows, [op for seq, e in events for op in to_operations(seq, e)], columns)
    assert latencies({}, rows, changed) == [("wait", 2.0), ("start", 0.5)]
    before = {1: (rows[1]["start_time"], rows[1]["end_time"])}
    ended = ev.JobCompleted(job_id=1, node="n", occurred_at=t0 + timedelta(seconds=7))
    changed, _ = fold_jobs(rows, to_operations(4, ended), columns)
    assert latencies(before, rows, changed) == [("run", 5.0)]
    assert latencies({1: (rows[1]["start_time"], rows[1]["end_time"])}, rows, changed) == []
