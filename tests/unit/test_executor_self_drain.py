"""Which errors make a node ask for its own drain, and how often it asks."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from conductor_contracts import events as ev
from conductor_executor.self_drain import SelfDrain, disk_fault, naming

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
