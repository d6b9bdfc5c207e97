"""A node whose own disk refuses jobs' files, or whose killed jobs do not die, asks to be drained.

Every job placed on such a node fails the same way (its folder, its script, its records cannot be
written), and its cores look free again a few seconds later: the node takes jobs faster than any
other and could fail most of a queue. As Slurm drains a node whose prolog fails, the executor then
publishes ``NodeDrainRequested(by_node=True)`` with the error as its reason: the scheduler places
nothing more there, what runs there finishes, and an operator resumes the node
(``POST /nodes/{name}/resume``) once the disk is mended. A path a job names (its working directory,
its output files) is the job's: an error there fails that job only. Jobs killed that still hold their
cores long after (processes stuck in the kernel, on a hung file system) are Slurm's "Kill task
failed", which drains the node too: every placement on those cores would be refused meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from conductor_contracts import events as ev
from conductor_contracts.text import printable
from conductor_platform.tasks import cancel_until_done

log = logging.getLogger("conductor.executor")

# A disk that is full, over its quota, read-only or failing: whatever a job is, it meets them too.
DISK_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
# One request for a burst of faults (a batch of placements fails together); asked again after this
# long if the faults go on, e.g. after an operator resumed a node whose disk is still full.
ASK_EVERY_S = 10.0
_REASON_CHARS = 500


def disk_fault(err: BaseException, own_dirs: Sequence[Path]) -> str | None:
    """The drain's reason when ``err`` is the node's disk refusing a file under one of ``own_dirs``
    (the executor's state), None for any other error."""
    if not isinstance(err, OSError) or err.errno not in DISK_FAULTS or err.filename is None:
        return None
    path = os.path.abspath(os.fsdecode(err.filename))
    if not any(_under(path, os.path.abspath(folder)) for folder in own_dirs):
        return None
    what = os.strerror(err.errno) if err.errno is not None else type(err).__name__
    return printable(f"the executor's disk refuses jobs' files: {what} ({path})", _REASON_CHARS)


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """An OSError raised inside names ``path`` when it names nothing: a write that finds the disk
    full says ENOSPC without a file (only an open names one), and the node would not be drained."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class SelfDrain:
    def __init__(self, node: str, own_dirs: Sequence[Path], publish: Callable[[ev.Event], Awaitable[object]]) -> None:
        self._node, self._own_dirs, self._publish = node, tuple(own_dirs), publish
        self._asked_at: float | None = None
        self._asking: asyncio.Task[None] | None = None

    def consider(self, err: BaseException) -> None:
        """Ask for the drain (in the background) when ``err`` is the node's disk refusing its files."""
        reason = disk_fault(err, self._own_dirs)
        if reason is not None:
            self.ask(reason)

    def ask(self, reason: str) -> None:
        """Ask for the drain (in the background), once for a burst of asks."""
        if self._asking is not None and not self._asking.done():
            return
        if self._asked_at is not None and time.monotonic() - self._asked_at < ASK_EVERY_S:
            return
        self._asking = asyncio.create_task(self._ask(reason))

    async def _ask(self, reason: str) -> None:
        # Published at once, not through the outbox, which writes to the disk that just failed.
        try:
            await self._publish(ev.NodeDrainRequested(node=self._node, reason=reason, by_node=True))
        except Exception as err:
            log.warning(
                "could not ask for this node's drain; asking again at the next fault",
                extra={"reason": reason, "error": printable(str(err) or type(err).__name__, _REASON_CHARS)},
            )
            return
        self._asked_at = time.monotonic()
        log.error("this node cannot take jobs: drain requested", extra={"reason": reason})

    async def close(self) -> None:
        if self._asking is not None:
            await cancel_until_done(self._asking)
