"""Which errors make a node ask for its own drain, and how often it asks."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from conductor_contracts import events as ev
from conductor_executor import service
from conductor_executor.self_drain import SelfDrain, disk_fault, naming
from conductor_executor.settings import ExecutorSettings

STATE = Path("/var/lib/conductor/executor")


def _refused(code: int, path: str | None) -> OSError:
    return OSError(code, os.strerror(code), path)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO])
def test_the_nodes_own_disk_refusing_a_file_is_a_fault_of_the_node(code: int) -> None:
    reason = disk_fault(_refused(code, f"{STATE}/n1/jobs/12"), [STATE])
    assert reason is not None and os.strerror(code) in reason and f"{STATE}/n1/jobs/12" in reason


@pytest.mark.parametrize(
    "err",
    [
        _refused(errno.ENOSPC, "/home/alice/work/out.txt"),  # a path the job names: the job's
        _refused(errno.ENOSPC, f"{STATE}-other/jobs/1"),  # a sibling that starts with the same text
        _refused(errno.ENOSPC, None),  # no path: nothing says whose disk it is
        _refused(errno.EACCES, f"{STATE}/n1/jobs/12"),  # not a disk failing
        _refused(errno.ENOENT, f"{STATE}/n1/jobs/12"),
        ValueError("embedded null byte"),
    ],
    ids=["job's path", "sibling folder", "no path", "EACCES", "ENOENT", "not an OSError"],
)
def test_other_errors_are_not_a_fault_of_the_node(err: BaseException) -> None:
    assert disk_fault(err, [STATE]) is None


def test_a_relative_state_folder_is_compared_as_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert disk_fault(_refused(errno.ENOSPC, str(tmp_path / "var/n1/jobs/3")), [Path("var")]) is not None


async def test_a_burst_of_faults_asks_once_and_a_failed_ask_is_made_again() -> None:
    sent: list[ev.Event] = []
    fail = [True]

    async def publish(event: ev.Event) -> None:
        if fail[0]:
            raise ConnectionError("NATS away")
        sent.append(event)

    drain = SelfDrain("n1", [STATE], publish)
    fault = _refused(errno.ENOSPC, f"{STATE}/n1/jobs/12")
    drain.consider(fault)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sent == []  # not published: the next fault asks again
    fail[0] = False
    for _ in range(5):
        drain.consider(fault)
        await asyncio.sleep(0)
    await drain.close()
    [asked] = sent
    assert isinstance(asked, ev.NodeDrainRequested) and (asked.node, asked.by_node) == ("n1", True)
    assert "No space left on device" in asked.reason


def test_a_write_refused_without_a_file_named_is_named_by_what_was_written() -> None:
    # A write that finds the disk full says ENOSPC and names no file (only an open does): the node
    # whose script.sh could not be written was not drained.
    with pytest.raises(OSError) as raised, naming(STATE / "n1/jobs/12/script.sh"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert raised.value.filename == f"{STATE}/n1/jobs/12/script.sh"
    assert disk_fault(raised.value, [STATE]) is not None
    with pytest.raises(OSError) as kept, naming(STATE / "elsewhere"):
        raise _refused(errno.ENOSPC, "/home/alice/out")
    assert kept.value.filename == "/home/alice/out"  # one that names its file keeps it


async def test_killed_jobs_that_do_not_die_drain_the_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Slurm's "Kill task failed": every placement on their cores waited for them, was refused, and
    # was placed here again, until each job's requeues ran out.
    monkeypatch.setattr(service, "_DYING_EXTRA_S", 0.2)
    executor = service.Executor(ExecutorSettings(node="n", cpus=2, memory="1G", state_dir=tmp_path, kill_grace_s=0))
    asked: list[ev.Event] = []

    async def publish(event: ev.Event) -> None:
        asked.append(event)

    executor.self_drain._publish = publish
    monkeypatch.setattr(executor, "_dying", lambda: [7, 3])
    assert await executor._dying_gone()
    await asyncio.sleep(0.05)  # the ask goes out in the background
    [drain] = asked
    assert isinstance(drain, ev.NodeDrainRequested) and drain.by_node and drain.node == "n"
    assert drain.reason.startswith("kill task failed: job(s) 3, 7 still hold their cores")
    died = service.Executor(ExecutorSettings(node="m", cpus=2, memory="1G", state_dir=tmp_path, kill_grace_s=0))
    died.self_drain._publish = publish
    gone: list[list[int]] = [[5], []]
    monkeypatch.setattr(died, "_dying", lambda: gone.pop(0) if len(gone) > 1 else gone[0])
    assert await died._dying_gone()  # it died within the wait: no drain
    await asyncio.sleep(0.05)
    assert [e.node for e in asked if isinstance(e, ev.NodeDrainRequested)] == ["n"]
