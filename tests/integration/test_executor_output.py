"""A job's output files on a real JetStream: what the executor opens for a job, and what it keeps.

Jobs run as the executor's user and may write anywhere it may; the executor itself must never hand
out a file the job did not write (a secret, its own environment) nor open its own log for a job.
Every job here is crafted straight into the stream, past the gateway that refuses some of them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from nats.js.errors import NotFoundError

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor import compiled
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus
from tests.integration.test_executor import NODE, _has, _outcome, executor_settings, running
from tests.unit.scheduling import submitted

SECRET = b"TOP SECRET, never the job's\n"


@pytest.fixture
async def executor(bus: Bus, nats_url: str, tmp_path: Path) -> AsyncIterator[ExecutorSettings]:
    # Job ids start over with each test's fresh stream, but the bucket outlives it: what an earlier
    # test stored for job 1 would be read as this test's.
    with contextlib.suppress(NotFoundError):
        await bus.js.delete_object_store(subjects.OUTPUT_BUCKET)
    async with running(bus, executor_settings(nats_url, tmp_path)) as settings:
        yield settings


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file only the executor's user may read, which no job writes."""
    path = tmp_path / "secret.txt"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


async def _run(bus: Bus, work: Path, **update: Any) -> int:
    job = submitted().model_copy(update={"working_directory": str(work), "script": "echo out"} | update)
    job_id = await bus.publish(job)
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(0,), memory_mb=100), by_scheduler=True)
    return job_id


async def _stored(bus: Bus, job_id: int, stream: str) -> bytes | None:
    try:
        return (await (await bus.outputs()).get(subjects.output_object(job_id, stream))).data
    except NotFoundError:
        return None


async def _failed_to_start(bus: Bus, job_id: int) -> str:
    outcome = await _outcome(bus, job_id)
    assert isinstance(outcome, ev.JobFailed), outcome
    assert outcome.exit_code is None and outcome.message.startswith("could not start the job"), outcome.message
    assert not await _has(bus, ev.JobStarted, job_id)
    return outcome.message


async def test_a_job_that_failed_to_start_keeps_nothing_from_the_path_it_named(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path, secret: Path
) -> None:
    # Its working directory is a file: the start fails before any output file is opened.
    (tmp_path / "a-file").write_text("")
    job_id = await _run(bus, tmp_path / "a-file", standard_output=str(secret), standard_error=str(secret))
    await _failed_to_start(bus, job_id)
    assert await _stored(bus, job_id, "stdout") is None
    assert await _stored(bus, job_id, "stderr") is None
    assert not (executor.jobs_dir / str(job_id) / "output.json").exists()
    assert secret.read_bytes() == SECRET  # never opened for the job either


@pytest.mark.parametrize("field", ["standard_output", "standard_error"])
@pytest.mark.parametrize(
    "path", ["/proc/self/environ", "/sys/conductor-test/out", "/dev/shm/out"], ids=["proc", "sys", "dev"]
)
async def test_a_path_under_proc_sys_or_dev_is_refused(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path, field: str, path: str
) -> None:
    job_id = await _run(bus, tmp_path, script="touch ran", **{field: path})
    message = await _failed_to_start(bus, job_id)
    assert f"{field} {path!r} is under /proc, /sys or /dev" in message, message
    assert not (tmp_path / "ran").exists()
    assert await _stored(bus, job_id, "stdout") is None
    assert await _stored(bus, job_id, "stderr") is None


async def test_a_path_through_a_symlinked_directory_into_proc_is_refused(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path
) -> None:
    # Checked as text the path is in the job's folder; opened, it is the executor's environment.
    (tmp_path / "d").symlink_to("/proc/self")
    job_id = await _run(bus, tmp_path, script="touch ran", standard_output="d/environ")
    message = await _failed_to_start(bus, job_id)
    assert "leads to '/proc/" in message, message
    assert not (tmp_path / "ran").exists()
    assert await _stored(bus, job_id, "stdout") is None


@pytest.mark.parametrize("through_a_link", [False, True], ids=["named", "through-a-symlinked-directory"])
async def test_nothing_in_the_executors_own_folder_is_opened_for_a_job(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path, through_a_link: bool
) -> None:
    kept = executor.jobs_dir / "kept.txt"  # stands for the outbox, markers and records there
    kept.write_text("the executor's\n")
    path = str(kept)
    if through_a_link:
        (tmp_path / "st").symlink_to(executor.state_dir)
        path = str(Path("st") / kept.relative_to(executor.state_dir))
    job_id = await _run(bus, tmp_path, script="touch ran", standard_output=path)
    message = await _failed_to_start(bus, job_id)
    assert "is inside the executor's own folder" in message, message
    assert kept.read_text() == "the executor's\n"  # not truncated
    assert not (tmp_path / "ran").exists()


async def test_nothing_in_a_protected_folder_is_opened_for_a_job(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    """Under ``conductor up`` NATS's log and PostgreSQL's data are beside the executor's folder: a
    job that named them as its output truncated them (review of 2026-12-02)."""
    data = tmp_path / "var" / "nats"
    data.mkdir(parents=True)
    (data / "msgs.blk").write_text("the log\n")
    settings = executor_settings(nats_url, tmp_path, protected_dirs=[tmp_path / "var"])
    async with running(bus, settings):
        named = await _run(bus, tmp_path, script="touch ran", standard_output=str(data / "msgs.blk"))
        assert "a folder this node protects (CONDUCTOR_PROTECTED_DIRS)" in await _failed_to_start(bus, named)
        inside = await _run(bus, data, script="touch ran")  # its default output would be made there
        assert "working_directory" in await _failed_to_start(bus, inside)
        # Another name of a protected file, outside the folder (review of the fix: it was emptied).
        os.link(data / "msgs.blk", tmp_path / "link")
        linked = await _run(bus, tmp_path, script="touch ran", standard_output=str(tmp_path / "link"))
        assert "other names (hard links)" in await _failed_to_start(bus, linked)
    assert (data / "msgs.blk").read_text() == "the log\n"
    assert list(data.iterdir()) == [data / "msgs.blk"]
    assert not (tmp_path / "ran").exists()


async def test_the_job_supervisors_program_is_not_opened_for_a_job(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    built = compiled.resolve(compiled.AUTO, tmp_path / "build")
    if built is None:
        pytest.skip("no C compiler here: jobs start through the shell form")
    program = tmp_path / "bin" / "conductor-job"
    program.parent.mkdir()
    shutil.copy2(built, program)
    settings = executor_settings(nats_url, tmp_path, job_supervisor=str(program))
    async with running(bus, settings):
        job_id = await _run(bus, tmp_path, script="true", standard_output=str(program))
        assert "the job supervisor's program" in await _failed_to_start(bus, job_id)
        assert isinstance(await _outcome(bus, await _run(bus, tmp_path, script="true")), ev.JobCompleted)
    assert program.read_bytes() == built.read_bytes()


@contextmanager
def _own_fd_in(fd: int, path: Path) -> Iterator[None]:
    """The test process's (so the executor's) ``fd`` writing to ``path`` for a while."""
    saved = os.dup(fd)
    target = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.dup2(target, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(target)


@pytest.mark.parametrize(
    ("path", "fd"),
    [("/dev/stderr", 2), ("/dev/stdout", 1), ("/proc/self/fd/1", 1), ("/proc/self/fd/2", 2)],
)
async def test_the_executors_own_output_is_never_a_jobs(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path, path: str, fd: int
) -> None:
    log = tmp_path / "executor.log"
    log.write_bytes(b"the executor's log\n")
    with _own_fd_in(fd, log):
        job_id = await _run(bus, tmp_path, script="echo forged log line", standard_output=path)
        message = await _failed_to_start(bus, job_id)
    assert "is under /proc, /sys or /dev" in message, message
    assert log.read_bytes().startswith(b"the executor's log\n"), "the executor's own log was truncated"
    assert b"forged" not in log.read_bytes()
    assert await _stored(bus, job_id, "stdout") is None


@pytest.mark.parametrize(
    ("update", "script"),
    [
        ({"standard_output": "out.txt"}, "rm out.txt; ln -s {secret} out.txt"),
        ({"standard_output": "out.txt"}, "ln -sf /proc/self/environ out.txt"),
        ({"standard_output": "out.txt"}, "rm out.txt; ln {secret} out.txt"),
        ({"standard_output": "out.txt"}, "cp {secret} other.txt; mv other.txt out.txt"),
        ({"standard_output": "out.txt"}, "rm out.txt; mkfifo out.txt"),
        ({"standard_output": "sub/environ"}, "mv sub sub.old; ln -s /proc/self sub"),
    ],
    ids=["symlink", "symlink-to-environ", "hard-link", "renamed-in", "fifo", "symlinked-directory"],
)
async def test_an_output_file_swapped_at_the_end_is_not_kept(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path, secret: Path, update: dict[str, str], script: str
) -> None:
    (tmp_path / "sub").mkdir()
    job_id = await _run(bus, tmp_path, script=f"echo mine\n{script.format(secret=secret)}\n", **update)
    assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)  # the outcome is still reported
    assert await _stored(bus, job_id, "stdout") is None


async def test_a_standard_error_swapped_at_the_end_is_not_kept_and_stdout_still_is(
    bus: Bus, executor: ExecutorSettings, tmp_path: Path, secret: Path
) -> None:
    script = f"echo kept; echo mine >&2; ln -sf {secret} err.txt"
    job_id = await _run(bus, tmp_path, script=script, standard_error="err.txt")
    assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)
    assert await _stored(bus, job_id, "stderr") is None
    assert await _stored(bus, job_id, "stdout") == b"kept\n"


async def test_output_to_dev_null_runs_and_keeps_nothing(bus: Bus, executor: ExecutorSettings, tmp_path: Path) -> None:
    job_id = await _run(bus, tmp_path, script="echo out; echo err >&2; touch ran", standard_output="/dev/null")
    assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)
    assert (tmp_path / "ran").exists()
    assert await _stored(bus, job_id, "stdout") is None
    assert await _stored(bus, job_id, "stderr") is None


async def test_what_the_job_does_to_its_own_file_is_kept(bus: Bus, executor: ExecutorSettings, tmp_path: Path) -> None:
    # Truncated and appended through its path, then left for another file: the copy is what the file
    # the executor opened holds at the end.
    script = "echo one\ntruncate -s 0 out.txt\necho two >> out.txt\nexec > elsewhere.txt\necho three\n"
    job_id = await _run(bus, tmp_path, script=script, standard_output="out.txt", standard_error="err.txt")
    assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)
    assert await _stored(bus, job_id, "stdout") == b"two\n"
    assert (tmp_path / "elsewhere.txt").read_text() == "three\n"
    assert await _stored(bus, job_id, "stderr") is None  # nothing written: nothing stored


async def test_a_normal_jobs_output_is_kept(bus: Bus, executor: ExecutorSettings, tmp_path: Path) -> None:
    job_id = await _run(bus, tmp_path, script="echo out; echo err >&2")
    assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)
    assert await _stored(bus, job_id, "stdout") == b"out\nerr\n"  # merged, as in Slurm
