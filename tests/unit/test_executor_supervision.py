"""A job's supervisor and its records: parsing what may be damaged, the real shell wrapper, and what a
starting executor makes of a job folder (no NATS: the files and processes only)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conductor_contracts import events as ev
from conductor_executor import supervision as sv
from conductor_executor.adoption import LOST_SUPERVISOR, Ended, Lost, Running, Unrecorded, survey, take_stock
from conductor_executor.leftovers import kill_unrecorded, start_time
from conductor_executor.outcomes import outcome_event
from conductor_executor.process import supervisor_argv


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("0\n", 0),
        ("7\n", 7),
        ("143\n", 143),
        ("255\n", 255),
        ("", None),  # created, cut short before the write
        ("7", None),  # no newline: not known to be whole
        ("256\n", None),
        ("-1\n", None),
        (" 7\n", None),
        ("7\n7\n", None),
        ("٣\n", None),  # a digit to Python, not to the shell that wrote it
        ("99999999999999999999\n", None),
        ("\x00\n", None),
    ],
)
def test_exit_records(text: str, code: int | None) -> None:
    assert sv.parse_exit(text) == code


@pytest.mark.parametrize(("text", "pgid"), [("1234\n", 1234), ("0\n", None), ("1\n", None), ("", None), ("x\n", None)])
def test_group_records_never_name_everything(text: str, pgid: int | None) -> None:
    assert sv.parse_pgid(text) == pgid


@pytest.mark.parametrize(
    ("text", "pgid", "code"),
    [
        ("", None, None),  # created, cut short before the write
        ("pgid 1234\n", 1234, None),  # running
        ("pgid 1234\nexit 0\n", 1234, 0),
        ("pgid 1234\nexit 143\n", 1234, 143),
        ("pgid 1234\nexit 14", 1234, None),  # the exit line unfinished: not known to be whole
        ("pgid 12", None, None),
        ("exit 3\n", None, 3),  # the pgid line was never written: the exit is no group to kill
        ("pgid 1\nexit 0\n", None, 0),
        ("pgid 0\n", None, None),
        ("pgid 1234\nexit 256\n", 1234, None),
        ("1234\n0\n", None, None),  # lines that do not say what they are
        ("pgid  1234\n", None, None),
        ("pgid 1234\npgid 99\nexit 1\nexit 2\n", 1234, 1),  # the first of each
    ],
)
def test_status_records(text: str, pgid: int | None, code: int | None) -> None:
    assert sv.parse_status(text) == (pgid, code)


@given(st.text(alphabet="pgidext 0123456789\n\x00٣", max_size=40))
def test_status_records_never_name_a_group_below_2_or_a_status_above_255(text: str) -> None:
    pgid, code = sv.parse_status(text)
    assert pgid is None or pgid > 1
    assert code is None or 0 <= code <= 255


def test_a_status_record_is_read_before_the_records_of_an_earlier_supervisor(tmp_path: Path) -> None:
    # A supervisor started by an earlier executor writes ``pgid`` and ``exit``: read while there is no
    # ``status`` (jobs running across an upgrade are taken over and reported with their real status).
    (tmp_path / sv.PGID).write_text("4321\n")
    (tmp_path / sv.EXIT).write_text("5\n")
    assert sv.read_pgid(tmp_path) == 4321
    ended = sv.read_exit(tmp_path)
    assert ended is not None and ended.code == 5
    (tmp_path / sv.STATUS).write_text("pgid 1234\n")
    assert sv.read_pgid(tmp_path) == 1234 and sv.read_exit(tmp_path) is None
    with (tmp_path / sv.STATUS).open("a") as status:
        status.write("exit 9\n")
    ended = sv.read_exit(tmp_path)
    assert ended is not None and ended.code == 9
    assert ended.ended_at == (tmp_path / sv.STATUS).stat().st_mtime


def test_kill_records_keep_only_known_reasons(tmp_path: Path) -> None:
    assert sv.parse_kill("timeout cancelled bogus\n") == {"timeout", "cancelled"}
    assert sv.read_kill(tmp_path) == frozenset()
    sv.write_kill(tmp_path, frozenset({"oom"}))
    assert sv.read_kill(tmp_path) == {"oom"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_missing_and_unreadable_records_are_none(tmp_path: Path) -> None:
    assert sv.read_exit(tmp_path) is None
    assert sv.read_pgid(tmp_path) is None
    assert sv.read_process(tmp_path) is None
    (tmp_path / sv.EXIT).mkdir()  # something, but not a file
    (tmp_path / sv.STATUS).mkdir()
    assert sv.read_exit(tmp_path) is None
    assert sv.read_pgid(tmp_path) is None


def test_process_record_round_trip() -> None:
    record = sv.ProcessRecord(
        pid=42, started=1.5, start=2.5, time_limit_s=60, memory_mb=100, cores=(0, 3), supervised=True
    )
    assert sv.parse_process(record.to_json()) == record


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"started": 1.0}',
        '{"pid": "42", "started": 1.0}',
        '{"pid": 1, "started": 1.0}',
        '{"pid": 42, "started": "yesterday"}',
        '{"pid": 42, "started": 1.0, "cores": [0, "1"]}',
        '{"pid": 42, "started": 1.0, "time_limit_s": 1.5}',
        '{"pid": 42, "started": 1.0, "cores": 5}',
    ],
)
def test_damaged_process_records_are_none(text: str) -> None:
    assert sv.parse_process(text) is None


def test_an_older_executors_record_is_unsupervised() -> None:
    record = sv.parse_process('{"pid": 42, "started": 1.0}')
    assert record is not None and not record.supervised and record.announced


@pytest.mark.parametrize(
    ("code", "reasons", "kind"),
    [
        (0, frozenset(), ev.JobCompleted),
        (7, frozenset(), ev.JobFailed),
        (143, frozenset({"cancelled", "timeout"}), ev.JobCancelled),
        (137, frozenset({"oom", "timeout"}), ev.JobOutOfMemory),
        (143, frozenset({"timeout"}), ev.JobTimedOut),
        (0, frozenset({"timeout"}), ev.JobTimedOut),
    ],
)
def test_outcomes(code: int, reasons: frozenset[str], kind: type) -> None:
    event = outcome_event(5, "n1", code, reasons, 1_700_000_000.25, "lost")
    assert isinstance(event, kind) and event.exit_code == code
    assert event.occurred_at.timestamp() == 1_700_000_000.25


def test_no_exit_record_and_no_kill_is_node_fail() -> None:
    event = outcome_event(5, "n1", None, frozenset(), None, "lost")
    assert isinstance(event, ev.JobFailed) and event.node_fail and event.message == "lost"


@pytest.mark.parametrize(
    ("reasons", "kind"),
    [
        (frozenset({"cancelled"}), ev.JobCancelled),
        (frozenset({"timeout"}), ev.JobTimedOut),
        (frozenset({"oom", "timeout"}), ev.JobOutOfMemory),
    ],
)
def test_a_kill_without_an_exit_record_is_what_was_asked(reasons: frozenset[str], kind: type) -> None:
    # Not NODE_FAIL: that would requeue a job that was cancelled or ran out of its time.
    event = outcome_event(5, "n1", None, reasons, None, "lost")
    assert isinstance(event, kind) and event.exit_code is None


def test_a_fenced_kill_without_an_exit_record_says_it_was_fenced() -> None:
    event = outcome_event(5, "n1", None, frozenset({"fenced"}), None, "lost")
    assert isinstance(event, ev.JobFailed) and event.node_fail and event.message != "lost"


# -- the wrapper itself, run by the real /bin/sh -------------------------------------------------------


# The wrapper of the executors before ``status``: what supervisors of jobs running across an upgrade run.
_WRAPPER_WITH_TWO_RECORDS = """\
d=${1%/*}
exec 3>&2 2>/dev/null
"$2" /bin/bash "$1" 2>&3 3>&- &
j=$!
echo "$j" >"$d/pgid"
wait "$j"
c=$?
kill -9 -"$j"
echo "$c" >"$d/exit"
"""


# Each form a supervisor has: the shell wrapper and the compiled program.
@pytest.fixture(params=["shell", "compiled"])
def form(request: pytest.FixtureRequest) -> Path | None:
    return request.getfixturevalue("built_supervisor") if request.param == "compiled" else None


def _supervise(
    folder: Path, script: str, wrapper: str = sv.WRAPPER, form: Path | None = None
) -> subprocess.Popen[bytes]:
    """``form``: the compiled supervisor to start the job with, None for the shell ``wrapper``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "script.sh"
    path.write_text(script)
    out = open(folder / "out", "wb")  # noqa: SIM115 - the child has its own copy
    argv, program = supervisor_argv(path, form)
    if form is None:
        argv[2] = wrapper
    try:
        return subprocess.Popen(
            argv,
            executable=program,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            cwd=folder,
        )
    finally:
        out.close()


def _wait_gone(pid: int, what: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        assert time.monotonic() < deadline, f"{what} still runs"
        time.sleep(0.01)


def test_the_wrapper_records_the_exit_and_keeps_its_own_noise_out(tmp_path: Path, form: Path | None) -> None:
    supervisor = _supervise(tmp_path, "echo out; echo err >&2; exit 7\n", form=form)
    assert supervisor.wait(10) == 0
    ended = sv.read_exit(tmp_path)
    assert ended is not None and ended.code == 7 and abs(ended.ended_at - time.time()) < 10
    assert (tmp_path / "out").read_text() == "out\nerr\n"
    # One record for the group and the exit: the older two are not written any more.
    assert not (tmp_path / sv.PGID).exists() and not (tmp_path / sv.EXIT).exists()


def test_the_job_has_a_group_and_session_of_its_own(tmp_path: Path, form: Path | None) -> None:
    supervisor = _supervise(tmp_path, "echo $$ $(ps -o pgid= -p $$) $(ps -o sid= -p $$) > ids\n", form=form)
    supervisor.wait(10)
    pid, pgid, sid = (int(x) for x in (tmp_path / "ids").read_text().split())
    assert pid == pgid == sid != supervisor.pid
    assert sv.read_pgid(tmp_path) == pid


def test_a_job_killed_by_a_signal_is_recorded_as_128_plus_it_and_its_leftovers_go(
    tmp_path: Path, form: Path | None
) -> None:
    supervisor = _supervise(tmp_path, "sleep 300 & echo $! > child\nsleep 300\n", form=form)
    # The shell creates the file before it writes the pid into it: wait for the whole line.
    while sv.read_pgid(tmp_path) is None or not _text(tmp_path / "child").endswith("\n"):
        time.sleep(0.01)
    pgid = sv.read_pgid(tmp_path)
    assert pgid is not None
    os.killpg(pgid, signal.SIGTERM)
    assert supervisor.wait(10) == 0, "the supervisor died with its job"
    ended = sv.read_exit(tmp_path)
    assert ended is not None and ended.code == 128 + signal.SIGTERM
    _wait_gone(int((tmp_path / "child").read_text()), "the job's background child")


def test_an_exit_is_recorded_when_the_job_removed_its_status(tmp_path: Path, form: Path | None) -> None:
    supervisor = _supervise(tmp_path, "until [ -s status ]; do sleep 0.01; done; rm status; exit 3\n", form=form)
    assert supervisor.wait(10) == 0
    ended = sv.read_exit(tmp_path)
    assert ended is not None and ended.code == 3


def test_an_exit_is_recorded_when_the_executor_ran_with_sigchld_ignored(tmp_path: Path, form: Path | None) -> None:
    # Inherited by the supervisor, an ignored SIGCHLD would have the kernel reap the job unseen.
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "script.sh").write_text("exit 4\n")
    argv, program = supervisor_argv(folder / "script.sh", form)
    supervisor = subprocess.Popen(
        argv,
        executable=program,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN),
    )
    supervisor.wait(10)
    ended = sv.read_exit(folder)
    assert ended is not None and ended.code == 4


# -- what a starting executor makes of a folder --------------------------------------------------------


def test_an_exit_record_without_a_process_record_is_an_end(tmp_path: Path) -> None:
    (tmp_path / sv.EXIT).write_text("3\n")
    found = survey(tmp_path, 1, 1.0)
    assert isinstance(found, Ended) and found.exit.code == 3 and found.record is None


def test_no_records_at_all_is_unrecorded(tmp_path: Path) -> None:
    assert isinstance(survey(tmp_path, 1, 1.0), Unrecorded)
    (tmp_path / sv.EXIT).write_text("")  # cut short: no better than none
    assert isinstance(survey(tmp_path, 1, 1.0), Unrecorded)


def test_a_gone_supervisor_without_an_exit_record_is_lost(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    record = sv.ProcessRecord(pid=gone.pid, started=1.0, supervised=True)
    sv.write_process(tmp_path, record)
    found = survey(tmp_path, 1, 1.0)
    assert isinstance(found, Lost) and found.message == LOST_SUPERVISOR and not found.reasons
    # Its executor was killing it: a restarted one reports what it was killed for.
    sv.write_kill(tmp_path, frozenset({"timeout"}))
    found = survey(tmp_path, 1, 1.0)
    assert isinstance(found, Lost) and found.reasons == {"timeout"}
    (tmp_path / sv.EXIT).write_text("0\n")
    found = survey(tmp_path, 1, 1.0)
    assert isinstance(found, Ended) and found.exit.code == 0 and found.record == record


def test_a_reused_pid_is_not_the_supervisor(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "30"])
    try:
        started = start_time(other.pid)
        assert started is not None
        sv.write_process(tmp_path, sv.ProcessRecord(pid=other.pid, started=started - 100, supervised=True))
        assert isinstance(survey(tmp_path, 1, 1.0), Lost)
    finally:
        other.kill()
        other.wait()


async def test_a_running_supervisor_is_taken_over_and_its_end_seen(tmp_path: Path, form: Path | None) -> None:
    supervisor = _supervise(tmp_path, f"until [ -e {tmp_path}/go ]; do sleep 0.02; done; exit 4\n", form=form)
    try:
        record = sv.ProcessRecord(
            pid=supervisor.pid, started=start_time(supervisor.pid), time_limit_s=60, memory_mb=5, supervised=True
        )
        sv.write_process(tmp_path, record)
        found = survey(tmp_path, 1, 1.0)
        assert isinstance(found, Running) and found.record == record
        (tmp_path / "go").touch()
        # Not this test's child as far as the executor knows: seen through its pidfd.
        outcome = await asyncio.wait_for(found.process.wait(None), 10)
        assert outcome.exit_code == 4 and outcome.reasons == frozenset()
    finally:
        supervisor.kill()
        supervisor.wait()


async def test_a_job_supervised_by_an_earlier_executors_wrapper_is_taken_over_killed_and_reported(
    tmp_path: Path,
) -> None:
    # Started before an upgrade: its supervisor writes ``pgid`` and ``exit``, never ``status``. The
    # new executor must still find its group to kill it and read how it ended.
    supervisor = _supervise(tmp_path, "sleep 300\n", _WRAPPER_WITH_TWO_RECORDS)
    try:
        _until_written(tmp_path / sv.PGID)
        record = sv.ProcessRecord(pid=supervisor.pid, started=start_time(supervisor.pid), supervised=True)
        (tmp_path / sv.PROCESS).write_text(record.to_json())
        found = survey(tmp_path, 1, 1.0)
        assert isinstance(found, Running)
        found.process.kill(cancelled=True)
        outcome = await asyncio.wait_for(found.process.wait(None), 10)
        assert outcome.exit_code == 128 + signal.SIGTERM and outcome.reasons == {"cancelled"}
        assert not (tmp_path / sv.STATUS).exists()
    finally:
        supervisor.kill()
        supervisor.wait()


def test_take_stock_sorts_folders_by_job_and_run_and_skips_the_done(tmp_path: Path) -> None:
    folders: dict[str, dict[str, str]] = {
        "7": {"done": "JobCompleted"},
        "8": {sv.EXIT: "0\n"},
        "8.1": {sv.EXIT: "3\n"},  # its second run, after a requeue: a job of its own here
        "9": {},
        "10": {},
        "10.2": {},
    }
    for name, files in folders.items():
        folder = tmp_path / name
        folder.mkdir()
        for file, text in files.items():
            (folder / file).write_text(text)
    (tmp_path / "9" / "script.sh").write_text("true\n")
    # Done as this executor marks it: in its process record, beside a supervisor's exit record.
    done = tmp_path / "11"
    done.mkdir()
    (done / sv.STATUS).write_text("pgid 4242\nexit 0\n")
    sv.write_process(done, sv.ProcessRecord(pid=4242, started=1.0, supervised=True))
    sv.mark_done(done, "JobCompleted")
    for junk in ("not-a-job", "7.01", "7.0", "x.1", "7.1.1"):
        (tmp_path / junk).mkdir()
    # Only run 2 of job 10 has its outcome in the outbox: run 0's folder is not marked done by it.
    stock = take_stock(tmp_path, lambda job_id, run: (job_id, run) == (10, 2), 1.0)
    assert list(stock.ended) == [(8, 0), (8, 1)] and list(stock.lost) == [(9, 0), (10, 0)] and not stock.running
    assert stock.ended[8, 1].exit.code == 3
    assert {job for job, _ in stock.unrecorded.values()} == {9}
    assert sv.read_done(tmp_path / "10.2") == "outbox" and sv.read_done(tmp_path / "10") is None


def test_folder_names_are_per_run_and_parse_back() -> None:
    assert sv.folder_name(5, 0) == "5" and sv.folder_name(5, 3) == "5.3"
    for job, run in ((5, 0), (5, 1), (12345678901234567890, 4294967295)):
        assert sv.parse_folder_name(sv.folder_name(job, run)) == (job, run)
    for junk in ("", "x", "5.", ".1", "5.0", "5.01", "5.1.1", "٣", "5.x", "-1"):
        assert sv.parse_folder_name(junk) is None


def test_an_unrecorded_supervisor_is_found_by_its_command_line_and_killed(tmp_path: Path, form: Path | None) -> None:
    supervisor = _supervise(tmp_path, "sleep 300\n", form=form)
    try:
        while sv.read_pgid(tmp_path) is None:
            time.sleep(0.01)
        job = sv.read_pgid(tmp_path)
        script = tmp_path / "script.sh"
        kill_unrecorded({str(script): (1, script.stat().st_mtime)})
        assert supervisor.wait(10) == -signal.SIGKILL
        assert sv.read_exit(tmp_path) is None
        assert job is not None
        _wait_gone(job, "the job of the killed supervisor")
    finally:
        supervisor.kill()
        supervisor.wait()


def _until_written(path: Path) -> None:
    """The shell creates a record before it writes its line: until the whole line is there."""
    deadline = time.monotonic() + 10
    while not _text(path).endswith("\n"):
        assert time.monotonic() < deadline, f"{path.name} never written"
        time.sleep(0.01)


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_a_record_is_marked_announced_in_place_and_reads_back_whole(tmp_path: Path) -> None:
    # The JobStarted goes into the outbox after the record is written; marking it announced then must
    # never leave a moment without a readable record (no truncation), nor change anything else.
    record = sv.ProcessRecord(
        pid=4242, started=12.5, start=1000.25, time_limit_s=60, memory_mb=100, cores=(1, 3), announced=False,
        supervised=True, placed_seq=77, requeue=True, traceparent=None,
    )  # fmt: skip
    sv.write_process(tmp_path, record)
    size = (tmp_path / sv.PROCESS).stat().st_size
    assert sv.read_process(tmp_path) == record
    sv.mark_announced(tmp_path)
    assert (tmp_path / sv.PROCESS).stat().st_size == size
    again = sv.read_process(tmp_path)
    assert again is not None and again.announced and again == sv.ProcessRecord(**(vars(record) | {"announced": True}))
    assert sv.read_done(tmp_path) is None
    # Done goes into the same record, in place, keeping what was marked before: no file is created.
    sv.mark_done(tmp_path, "JobTimedOut")
    assert (tmp_path / sv.PROCESS).stat().st_size == size
    assert sorted(p.name for p in tmp_path.iterdir()) == [sv.PROCESS]
    assert sv.read_done(tmp_path) == "JobTimedOut"
    assert sv.read_process(tmp_path) == sv.ProcessRecord(**(vars(again) | {"done": "JobTimedOut"}))


def test_an_earlier_executors_record_is_marked_done_in_place_and_a_folder_without_one_by_a_file(
    tmp_path: Path,
) -> None:
    # Written by an executor from before ``done`` was a field, with no room after it: the longer text
    # is written over it whole, never truncated first.
    older = '{"pid": 4242, "started": 12.5, "start": 1.0, "supervised": true, "announced": false}'
    (tmp_path / sv.PROCESS).write_text(older)
    sv.mark_announced(tmp_path)
    sv.mark_done(tmp_path, "JobCompleted")
    record = sv.read_process(tmp_path)
    assert record is not None and record.announced and record.done == "JobCompleted" and record.pid == 4242
    assert sv.read_done(tmp_path) == "JobCompleted" and not (tmp_path / sv.DONE).exists()
    # No record (the job never started) or a damaged one: the marker is a file of its own.
    for folder, text in ((tmp_path / "none", None), (tmp_path / "damaged", '{"pid": ')):
        folder.mkdir()
        if text is not None:
            (folder / sv.PROCESS).write_text(text)
        assert sv.read_done(folder) is None
        sv.mark_done(folder, "JobCancelled")
        assert sv.read_done(folder) == "JobCancelled" and (folder / sv.DONE).read_text() == "JobCancelled"


def test_records_a_job_replaced_in_its_folder_are_read_as_missing_never_waited_on(tmp_path: Path) -> None:
    """A job can put anything at a record's name in its own folder ($CONDUCTOR_JOB_DIR): a FIFO (an
    open would wait for a writer for ever), a link to /dev/zero (a read would never end)."""
    os.mkfifo(tmp_path / sv.DONE)
    os.mkfifo(tmp_path / sv.STATUS)
    (tmp_path / sv.PROCESS).symlink_to("/dev/zero")
    assert sv.read_done(tmp_path) is None
    assert sv.read_process(tmp_path) is None
    assert sv.read_exit(tmp_path) is None and sv.read_pgid(tmp_path) is None
    # Marked done all the same: in a file put in place of the FIFO, the link left alone.
    sv.mark_done(tmp_path, "JobCompleted")
    assert sv.read_done(tmp_path) == "JobCompleted"
    assert (tmp_path / sv.PROCESS).is_symlink()


def test_a_fifo_in_place_of_the_process_record_is_no_record(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / sv.PROCESS)
    sv.mark_done(tmp_path, "JobFailed")
    assert sv.read_done(tmp_path) == "JobFailed"
