"""Events the executor owes the log, kept on disk until the stream has acknowledged them.

One file per event, ``<seq>-<job>-<type>.json``, written atomically (tmp, fsync, rename, fsync the
folder), so an outcome survives NATS being away for any time and the executor restarting meanwhile.
One publisher drains the files in ``seq`` order, which keeps the order the rest of the system relies on
(a job's JobStarted before its outcome). Every event carries a Nats-Msg-Id (``subjects.dedupe_id``),
so a publish whose ack was lost and is sent again is stored once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from conductor_contracts import events as ev
from conductor_platform.retry import Backoff

log = logging.getLogger("conductor.executor.outbox")

OUTCOMES = frozenset({"JobCompleted", "JobFailed", "JobTimedOut", "JobOutOfMemory", "JobCancelled"})


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Outbox:
    def __init__(self, folder: Path, publish: Callable[[ev.Event], Awaitable[object]], backoff: Backoff) -> None:
        self.folder, self._publish, self._backoff = folder, publish, backoff
        folder.mkdir(parents=True, exist_ok=True)
        for partial in folder.glob(".*.tmp"):  # a write cut short never reached its rename: not owed
            partial.unlink(missing_ok=True)
        self._seq = max((int(p.name.split("-", 1)[0]) for p in self.pending()), default=0)
        self._wake = asyncio.Event()

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("[0-9]*.json"))

    def holds_outcome(self, job_id: int) -> bool:
        return any(job == str(job_id) and kind in OUTCOMES for job, kind in map(self._job_and_type, self.pending()))

    @staticmethod
    def _job_and_type(path: Path) -> tuple[str, str]:
        _, job, kind = path.stem.split("-", 2)
        return job, kind

    def put(self, event: ev.Event) -> None:
        """Durable when it returns. Synchronous on purpose: a caller that writes its ``done`` marker
        right after cannot be interleaved with the publisher deleting the file."""
        self._seq += 1
        job = getattr(event, "job_id", None)
        name = f"{self._seq:012d}-{job if job is not None else 'node'}-{event.type}.json"
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(ev.encode(event))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / name)
        _fsync_dir(self.folder)
        self._wake.set()

    async def run(self) -> None:
        """Publish pending events in order, forever: a failure waits (backing off) and tries again."""
        while True:
            try:
                await self._drain_once()
            except Exception:  # the folder itself in trouble (full disk, permissions): keep trying
                log.exception("outbox publisher failed; retrying")
                await asyncio.sleep(self._backoff.next())

    async def _drain_once(self) -> None:
        self._wake.clear()
        files = self.pending()
        if not files:
            await self._wake.wait()
            return
        for path in files:
            if not await self._send(path):
                return

    async def _send(self, path: Path) -> bool:
        try:
            event = ev.decode(path.read_bytes())
        except (OSError, ValueError) as err:
            # Cannot happen with atomic writes unless someone edits the folder; keep it for a human
            # rather than blocking every event behind it.
            log.error("unreadable outbox file set aside", extra={"file": path.name, "error": str(err)})
            path.rename(path.with_suffix(".bad"))
            return True
        try:
            await self._publish(event)
        except Exception as err:
            delay = self._backoff.next()
            log.warning(
                "outbox: publish failed; retrying",
                extra={
                    "file": path.name,
                    "error": str(err) or type(err).__name__,
                    "attempt": self._backoff.failures,
                    "retry_in_s": delay,
                },
            )
            # Only time ends this pause: a new event is no reason to hurry a publish that just failed.
            await asyncio.sleep(delay)
            return False
        self._backoff.reset()
        path.unlink(missing_ok=True)
        return True

    async def drained(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every pending event to be published (a clean stop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.pending():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True
