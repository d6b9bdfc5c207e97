"""Opening a job's output files and reading them back: only the files the executor opened for it."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conductor_executor.environment import JobFiles
from conductor_executor.output import (
    OWN_FOLDER,
    RECORD,
    JobOutputs,
    NotTheJobsFile,
    OpenedFile,
    OutputRefused,
    make_working_directory,
    open_outputs,
    read_tail,
    record_files,
    recorded_files,
)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def opened() -> Iterator[list[JobOutputs]]:
    kept: list[JobOutputs] = []
    yield kept
    for outputs in kept:
        outputs.close()


def test_a_file_is_created_truncated_and_recorded_by_its_inode(tmp_path: Path, opened: list[JobOutputs]) -> None:
    out = tmp_path / "out"
    out.write_text("an earlier run's output")
    outputs = open_outputs(JobFiles(str(out), str(out)))
    opened.append(outputs)
    info = out.stat()
    assert outputs.stderr_fd == outputs.stdout_fd  # one file, one description: writes interleave in order
    assert outputs.record.stdout == outputs.record.stderr == OpenedFile(str(out), info.st_dev, info.st_ino)
    assert info.st_size == 0
    assert os.get_blocking(outputs.stdout_fd)  # the job's writes block as usual
    os.write(outputs.stdout_fd, b"line\n")
    assert outputs.record.stdout is not None
    assert read_tail(outputs.record.stdout, 100) == b"line\n"
    assert read_tail(outputs.record.stdout, 3) == b"ne\n"  # the end of a log is what people look for


def test_dev_null_is_allowed_and_records_nothing(opened: list[JobOutputs]) -> None:
    outputs = open_outputs(JobFiles("/dev/null", "/dev/null"))
    opened.append(outputs)
    assert outputs.record.stdout is None and outputs.record.stderr is None


@pytest.mark.parametrize(
    "path",
    [
        "/dev/stderr",
        "/dev/tty",
        "/proc/self/fd/2",
        "/proc/self/environ",
        "/sys/x",
        "/dev",
        "//proc/self/environ",
    ],
)
def test_the_systems_own_files_are_refused_before_they_are_opened(path: str) -> None:
    with pytest.raises(OutputRefused, match=r"under /proc, /sys or /dev"):
        open_outputs(JobFiles(path, path))


def test_a_final_symbolic_link_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("secret")
    (tmp_path / "out").symlink_to(target)
    with pytest.raises(OSError) as raised:
        open_outputs(JobFiles(str(tmp_path / "out"), str(tmp_path / "out")))
    assert raised.value.errno == errno.ELOOP
    assert target.read_text() == "secret"  # not truncated


def test_a_directory_symlinked_into_proc_is_refused_by_where_the_file_is(tmp_path: Path) -> None:
    (tmp_path / "d").symlink_to("/proc/self")
    before = _open_fds()
    with pytest.raises(OutputRefused, match="leads to '/proc/"):
        open_outputs(JobFiles(str(tmp_path / "d" / "environ"), str(tmp_path / "d" / "environ")))
    assert _open_fds() == before


def test_a_fifo_fails_without_blocking_and_one_with_a_reader_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as raised:
        open_outputs(JobFiles(str(fifo), str(fifo)))
    assert raised.value.errno == errno.ENXIO
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(OutputRefused, match="not a regular file"):
            open_outputs(JobFiles(str(fifo), str(fifo)))
    finally:
        os.close(reader)


def test_stdout_is_closed_when_stderr_is_refused(tmp_path: Path) -> None:
    before = _open_fds()
    with pytest.raises(OutputRefused):
        open_outputs(JobFiles(str(tmp_path / "out"), "/proc/self/environ"))
    assert _open_fds() == before


def test_the_record_round_trips_and_an_older_executors_record_is_not_trusted(
    tmp_path: Path, opened: list[JobOutputs]
) -> None:
    outputs = open_outputs(JobFiles(str(tmp_path / "out"), "/dev/null"))
    opened.append(outputs)
    record_files(tmp_path, outputs.record)
    assert recorded_files(tmp_path) == outputs.record
    # Paths without inodes: nothing proves what is there now is the job's.
    (tmp_path / RECORD).write_text('{"stdout": "/tmp/secret", "stderr": "/tmp/secret"}')
    assert recorded_files(tmp_path) is None
    (tmp_path / RECORD).write_text('{"stdout": {"path": "/x", "dev": "1", "ino": 2}, "stderr": null}')
    assert recorded_files(tmp_path) is None


def test_a_job_whose_output_all_goes_to_dev_null_has_no_record_and_nothing_to_keep(
    tmp_path: Path, opened: list[JobOutputs]
) -> None:
    outputs = open_outputs(JobFiles("/dev/null", "/dev/null"))
    opened.append(outputs)
    record_files(tmp_path, outputs.record)
    assert not (tmp_path / RECORD).exists() and recorded_files(tmp_path) is None


def _recorded(path: Path) -> OpenedFile:
    path.write_text("the job's\n")
    info = path.stat()
    return OpenedFile(str(path), info.st_dev, info.st_ino)


def test_a_file_swapped_after_the_job_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("secret")
    out = tmp_path / "out"
    record = _recorded(out)
    out.unlink()
    os.link(secret, out)
    with pytest.raises(NotTheJobsFile):
        read_tail(record, 100)
    out.unlink()
    out.symlink_to(secret)
    with pytest.raises(NotTheJobsFile):
        read_tail(record, 100)
    out.unlink()
    os.mkfifo(out)  # opened without blocking, and refused by its type
    with pytest.raises(NotTheJobsFile):
        read_tail(record, 100)
    out.unlink()
    assert read_tail(record, 100) is None  # gone: nothing to keep, nothing to say


def test_what_the_job_did_to_its_own_file_is_read(tmp_path: Path) -> None:
    out = tmp_path / "out"
    record = _recorded(out)
    os.truncate(out, 0)
    with out.open("a") as f:
        f.write("appended\n")
    os.link(out, tmp_path / "another-name")  # more names for the job's own file change nothing
    assert stat.S_ISREG(out.stat().st_mode)
    assert read_tail(record, 100) == b"appended\n"


def test_nothing_in_the_executors_own_folder_is_opened_even_through_a_link(tmp_path: Path) -> None:
    own = tmp_path / "state"
    (own / "outbox").mkdir(parents=True)
    owed = own / "outbox" / "000000000001-7-JobCompleted.json"
    owed.write_text("{}")
    (tmp_path / "work").symlink_to(own / "outbox")
    for path in (owed, tmp_path / "work" / owed.name, own):
        with pytest.raises(OutputRefused, match="inside the executor's own folder"):
            open_outputs(JobFiles(str(path), str(path)), {own.resolve(): OWN_FOLDER})
    assert owed.read_text() == "{}"


def test_a_protected_folder_mounted_elsewhere_is_still_protected(tmp_path: Path) -> None:
    own = tmp_path / "state"
    own.mkdir()
    (own / "record").write_text("kept\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if subprocess.run(["mount", "--bind", str(own), str(elsewhere)], capture_output=True).returncode != 0:
        pytest.skip("no bind mount here (not root, or no mount namespace of our own)")
    try:
        for path in (elsewhere / "record", elsewhere / "new"):
            with pytest.raises(OutputRefused, match="inside the executor's own folder"):
                open_outputs(JobFiles(str(path), str(path)), {own.resolve(): OWN_FOLDER})
        with pytest.raises(OutputRefused, match="inside the executor's own folder"):
            make_working_directory(str(elsewhere / "work"), {own.resolve(): OWN_FOLDER})
    finally:
        subprocess.run(["umount", "--lazy", str(elsewhere)], check=True)  # lazy: an open file does not keep it
    assert (own / "record").read_text() == "kept\n"
    assert sorted(own.iterdir()) == [own / "record"], "nothing made in it"
