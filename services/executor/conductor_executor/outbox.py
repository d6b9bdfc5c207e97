"""Events the executor owes the log, kept on disk until the stream has acknowledged them.

One file per event, ``<seq>-<job>-<type>.json`` (``<seq>-<job>r<run>-<type>.json`` for a job's
runs after a requeue: two runs of one job are two jobs' worth of reports), written atomically (tmp,
fsync, rename, fsync the folder), so an outcome survives NATS being away for any time and the
executor restarting meanwhile.
One publisher drains the files in ``seq`` order, which keeps the order the rest of the system relies on
(a job's JobStarted before its outcome). Every event carries a Nats-Msg-Id (``subjects.dedupe_id``),
so a publish whose ack was lost and is sent again is stored once.

What it costs per job, and how it is kept low (issue 9): ``write`` (the executor's own path) does the
disk work in a thread of the outbox, so the event loop runs other jobs while the disk syncs, and
writes that come in meanwhile are committed together (each file synced, one sync of the folder). The
publisher sends up to ``WINDOW`` events at once, each of another job (a job's events stay one after
the other, so its JobStarted is stored before its outcome even when a publish fails), with a node's
own events alone; published files are removed by the same thread.

Given a ``spares`` folder (the executor gives one), a published file is not deleted but moved there,
and the next event is written into it: no file is created or deleted per event. On ext4 creating a
file skips every inode deleted in the last minute (``find_inode_bit``/``recently_deleted``): on this
machine, with two outbox files deleted per job, each file the executor created (a job's folder and
records too) cost ~0.2-0.5 ms of kernel CPU, a third of the executor's CPU per job (``perf``).

A file holds the event's JSON on its first line and, on a second line when there is one, a JSON
object of the headers it is published with (its ``traceparent``: the trace of the job goes on through
the disk, across NATS outages and restarts). A file without that line is published without them.

Nothing in the folder stops the executor: a file without that shape is set aside (``.bad``) at start,
and a file of that shape that cannot be read is replaced, in its place in the order, by what its name
says it was owed (``substitute``), so that a damaged outcome still ends its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import logging
import os
import re
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from conductor_contracts import events as ev
from conductor_platform import tracing
from conductor_platform.retry import Backoff, pause

log = logging.getLogger("conductor.executor.outbox")


# Bounded (a stream sequence, hence a job id, is a uint64: at most 20 digits) so that a stray name
# cannot make an absurd number.
# Events published at once by the publisher: enough to fill a round trip to NATS under load.
WINDOW = 64
# Published files kept for reuse; beyond that they are deleted.
MAX_SPARES = 256

_NAME = re.compile(r"(\d{1,20})-(?:(\d{1,20})(?:r([1-9]\d{0,9}))?|node)-([A-Za-z]{1,64})\.json")

# What an unreadable file is replaced by: (its job id or None, its run, its event type, why) -> the
# event to publish in its place, or None to publish nothing.
Substitute = Callable[[int | None, int, str, str], ev.Event | None]
# Called before an event is published; an exception is a failed publish (backed off, tried again).
BeforePublish = Callable[[ev.Event], Awaitable[None]]
# Publishes an event with its headers.
Publish = Callable[[ev.Event, dict[str, str]], Awaitable[object]]


def encode(event: ev.Event, traceparent: str | None = None) -> bytes:
    """A file's content: the event, then its headers (one JSON line each; the event's JSON never
    holds a raw newline)."""
    data = ev.encode(event)
    return data if traceparent is None else data + b"\n" + json.dumps(tracing.headers(traceparent)).encode()


def decode(data: bytes) -> tuple[ev.Event, dict[str, str]]:
    """The event of a file and its headers; headers that cannot be read are dropped (a trace is not
    worth an outcome). Raises ValueError when the event cannot be read."""
    first, _, rest = data.partition(b"\n")
    event = ev.decode(first)
    try:
        headers = json.loads(rest) if rest.strip() else {}
    except ValueError:
        return event, {}
    traceparent = tracing.of_headers(headers) if isinstance(headers, dict) else None
    return event, tracing.headers(traceparent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Name:
    seq: int
    job_id: int | None  # None: the node's own events
    run: int
    kind: str  # the event's type


def parse_name(name: str) -> Name | None:
    """What an outbox file's name says of the event in it."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    job = None if match[2] is None else int(match[2])
    return Name(int(match[1]), job, int(match[3] or 0), match[4])


def file_name(seq: int, event: ev.Event) -> str:
    job = getattr(event, "job_id", None)
    run = getattr(event, "run", 0)
    who = "node" if job is None else str(job) if not run else f"{job}r{run}"
    return f"{seq:012d}-{who}-{event.type}.json"


class Outbox:
    def __init__(
        self,
        folder: Path,
        publish: Publish,
        backoff: Backoff,
        *,
        substitute: Substitute | None = None,
        before_publish: BeforePublish | None = None,
        spares: Path | None = None,
    ) -> None:
        """``spares``: a folder of the same file system where published files wait to be written
        again (none: they are deleted)."""
        self.folder, self._publish, self._backoff = folder, publish, backoff
        self._substitute = substitute
        self._before_publish = before_publish
        # Files that could not be set aside (the folder refuses renames): skipped, not retried.
        self._ignored: set[str] = set()
        self._wake = asyncio.Event()
        # Names being written by ``write``: not published until their writer has them back (it writes
        # a done marker right after, which must come before the file can be published and removed).
        self._writing: set[str] = set()
        # Names published and not yet removed: never sent again.
        self._sent: set[str] = set()
        self._queued: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None
        # One thread does the outbox's disk work, in order.
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="outbox")
        self._spares_dir = spares
        self._spares: deque[Path] = deque()  # taken and given back from both threads: deque is atomic
        self._spare_names = itertools.count()
        if spares is not None:
            self._find_spares(spares)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._tidy()
        except OSError as err:  # every put retries; the executor must start and say why it waits
            log.error("outbox folder unusable", extra={"folder": str(folder), "error": str(err)})
        self._seq = max((seq for seq, _ in self._entries()), default=0)

    def _find_spares(self, spares: Path) -> None:
        try:
            spares.mkdir(parents=True, exist_ok=True)
            found = [path for path in spares.iterdir() if path.name.isdigit()]
        except OSError as err:  # then files are created and deleted as without spares
            log.warning("outbox spares folder unusable", extra={"folder": str(spares), "error": str(err)})
            self._spares_dir = None
            return
        self._spares.extend(found[:MAX_SPARES])
        self._spare_names = itertools.count(max((int(path.name) for path in found), default=0) + 1)

    def _recycle(self, path: Path) -> None:
        """A published file: kept as a spare, or deleted."""
        if self._spares_dir is None or len(self._spares) >= MAX_SPARES:
            path.unlink(missing_ok=True)
            return
        spare = self._spares_dir / str(next(self._spare_names))
        try:
            os.replace(path, spare)
        except FileNotFoundError:  # discarded meanwhile
            return
        except OSError:
            path.unlink(missing_ok=True)
            return
        self._spares.append(spare)

    def _tidy(self) -> None:
        for path in self.folder.iterdir():
            name = path.name
            if name.startswith(".") and name.endswith(".tmp"):  # a write cut short: never owed
                with contextlib.suppress(OSError):
                    path.unlink()
            elif name.endswith(".bad"):
                continue
            elif parse_name(name) is None:
                self._set_aside(path, "not an outbox event")
            # An event's name on what is not a regular file: ``_entries`` sets it aside.

    def _set_aside(self, path: Path, why: str) -> None:
        target = path.with_name(f"{path.name}.bad")
        try:
            os.replace(path, target)
        except OSError as err:
            self._ignored.add(path.name)
            log.error("outbox: cannot set a file aside; ignoring it", extra={"file": path.name, "error": str(err)})
            return
        log.error("outbox: file set aside", extra={"file": path.name, "as": target.name, "reason": why})

    def _entries(self) -> list[tuple[int, Path]]:
        found, odd = [], []
        try:
            listing = os.scandir(self.folder)
        except OSError:  # gone or unusable: nothing it holds can be sent now (as ``glob`` had it)
            return []
        with listing:
            for entry in listing:
                name = entry.name
                if name.startswith(".") or not name.endswith(".json") or name in self._ignored:
                    continue
                parsed = parse_name(name)
                if parsed is None:
                    continue
                # The executor writes files: a folder or a link of an event's name is not its own
                # (a job may make one), and reading it as an unreadable event would publish a
                # substitute outcome for the job its name says.
                if entry.is_file(follow_symlinks=False):
                    found.append((parsed.seq, Path(entry.path)))
                else:
                    odd.append(Path(entry.path))
        for path in odd:
            self._set_aside(path, "not a regular file")
        return sorted(found)

    def pending(self) -> list[Path]:
        try:
            return [path for _, path in self._entries()]
        except OSError:  # the folder is gone or unreadable: nothing it holds can be sent now
            return []

    def holds_outcome(self, job_id: int, run: int = 0) -> bool:
        for path in self.pending():
            parsed = parse_name(path.name)
            if parsed is not None and (parsed.job_id, parsed.run) == (job_id, run) and parsed.kind in ev.TERMINAL_TYPES:
                return True
        return False

    def owed(self) -> list[Name]:
        """What the pending files say, in order."""
        return [name for path in self.pending() if (name := parse_name(path.name)) is not None]

    def runs_owed(self) -> set[tuple[int, int]]:
        """The runs something is owed of, as (job, run). Raises OSError when the folder cannot be
        listed, where ``pending`` says nothing is owed: for what must not take "cannot tell" for
        "nothing" (``retention``: a folder is removed only once nothing of its run is owed)."""
        runs = set()
        for entry in os.listdir(self.folder):
            name = parse_name(entry) if entry.endswith(".json") else None
            if name is not None and name.job_id is not None and entry not in self._ignored:
                runs.add((name.job_id, name.run))
        return runs

    def discard(self, job_id: int, run: int) -> int:
        """Drop what is still owed about one run of a job (the scheduler ended that run: reporting it
        would only say something the log has already decided otherwise). How many files went. The
        publisher may be sending one of them right now: that one reaches the log, where the fold
        ignores it as a report of an ended run."""
        dropped = 0
        for path in self.pending():
            parsed = parse_name(path.name)
            if parsed is not None and (parsed.job_id, parsed.run) == (job_id, run):
                with contextlib.suppress(OSError):
                    path.unlink()
                    dropped += 1
        return dropped

    def _write(self, name: str, data: bytes) -> None:
        self._write_file(name, data)
        _fsync_dir(self.folder)

    def _write_file(self, name: str, data: bytes) -> None:
        """The file, synced and in place; the folder is still to be synced. Written into a spare when
        there is one: over what it held, then cut to its new length. Not emptied first: a file
        truncated to nothing gives its block back and takes another when written (ext4), which cost
        as much as the write and its sync together here. What a spare holds counts for nothing until
        it is renamed into the outbox, synced, with only the new event in it."""
        flags = os.O_WRONLY | os.O_CLOEXEC
        try:
            tmp = self._spares.popleft()
        except IndexError:
            tmp = self.folder / f".{name}.tmp"
            flags |= os.O_CREAT | os.O_TRUNC
        try:
            fd = os.open(tmp, flags, 0o666)
            try:
                if os.pwrite(fd, data, 0) != len(data):  # a regular file's write is short only when full
                    raise OSError(errno.ENOSPC, "short write", str(tmp))
                os.ftruncate(fd, len(data))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.folder / name)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def _write_files(self, files: list[tuple[str, bytes]]) -> list[OSError | None]:
        """A group commit: every file, then one sync of the folder. What failed, file by file."""
        errors: list[OSError | None] = []
        for name, data in files:
            try:
                self._write_file(name, data)
                errors.append(None)
            except OSError as err:
                errors.append(err)
        if any(err is None for err in errors):
            try:
                _fsync_dir(self.folder)
            except OSError as err:
                errors = [err] * len(errors)
        return errors

    def put(self, event: ev.Event, traceparent: str | None = None) -> None:
        """Durable when it returns; raises OSError when the folder cannot take it. Synchronous on
        purpose: a caller that writes its ``done`` marker right after cannot be interleaved with the
        publisher deleting the file. ``traceparent``: published with the event."""
        seq = self._seq + 1
        self._write(file_name(seq, event), encode(event, traceparent))
        self._seq = seq
        self._wake.set()

    async def write(self, event: ev.Event, traceparent: str | None = None) -> None:
        """``put`` with the disk work off the event loop, committed with the writes that come in
        meanwhile. Durable when it returns; raises OSError when the folder cannot take it. The event
        is not published before its caller runs again: a ``done`` marker written right after the
        return (without awaiting anything first) is on disk before the file can be removed."""
        self._seq += 1  # taken now: writes in flight together keep the order they were asked in
        name = file_name(self._seq, event)
        done = asyncio.get_running_loop().create_future()
        self._queued.append((name, encode(event, traceparent), done))
        self._writing.add(name)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit())
        try:
            await done
        finally:
            self._writing.discard(name)
            self._wake.set()

    async def _commit(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                errors = await loop.run_in_executor(self._disk, self._write_files, [(n, d) for n, d, _ in batch])
            except BaseException as err:  # never leave a writer waiting
                for _, _, done in batch + self._queued:
                    if not done.done():
                        done.set_exception(err if isinstance(err, Exception) else OSError("outbox stopped"))
                self._queued = []
                raise
            for (_, _, done), error in zip(batch, errors, strict=True):
                if not done.done():
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)

    async def keep(self, event: ev.Event, stop: asyncio.Event, traceparent: str | None = None) -> bool:
        """``put`` until it is written (True) or ``stop`` is set (False): a full or read-only disk
        delays what the executor owes, it does not drop it. At least one try, even when stopping."""
        backoff = Backoff(self._backoff.low_s, self._backoff.high_s)
        while True:
            try:
                await self.write(event, traceparent)
            except OSError as err:
                if stop.is_set():
                    log.error(
                        "outbox: stopping with an event not written",
                        extra={"event": event.type, "job_id": getattr(event, "job_id", None), "error": str(err)},
                    )
                    return False
                delay = backoff.next()
                log.warning(
                    "outbox: could not write an event; retrying",
                    extra={
                        "event": event.type,
                        "job_id": getattr(event, "job_id", None),
                        "error": str(err),
                        "attempt": backoff.failures,
                        "retry_in_s": delay,
                    },
                )
                await pause(stop, delay)
                continue
            return True

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
        window = self._window()
        if not window:
            await self._wake.wait()
            return
        results = await asyncio.gather(*(self._publish_file(path) for path in window))
        sent = [path for path, result in zip(window, results, strict=True) if result is True]
        self._forget(sent)
        # False: nothing left to publish there (gone meanwhile, or unreadable and set aside), as in ``_send``.
        failed = [(path, result) for path, result in zip(window, results, strict=True) if isinstance(result, Exception)]
        if failed:
            await self._failed(*failed[0])
        else:
            self._backoff.reset()

    def _window(self) -> list[Path]:
        """What to publish now, in order: pending events up to the first one still being written, each
        of another job than the others, at most ``WINDOW``; a node's own event goes alone."""
        window: list[Path] = []
        jobs: set[tuple[int, int]] = set()
        for _, path in self._entries():
            name = path.name
            if name in self._sent:
                continue
            if name in self._writing or len(window) >= WINDOW:
                break
            parsed = parse_name(name)
            if parsed is None:
                continue
            if parsed.job_id is None:  # a registration: after everything before it, before the rest
                if not window:
                    window.append(path)
                break
            if (parsed.job_id, parsed.run) in jobs:
                break
            jobs.add((parsed.job_id, parsed.run))
            window.append(path)
        return window

    def _forget(self, paths: list[Path]) -> None:
        """Remove published files, in the outbox's thread; until then they are not sent again."""
        if not paths:
            return
        names = [path.name for path in paths]
        self._sent.update(names)

        def remove() -> None:
            for path in paths:
                with contextlib.suppress(OSError):
                    self._recycle(path)

        def removed(_: object) -> None:
            self._sent.difference_update(names)

        asyncio.get_running_loop().run_in_executor(self._disk, remove).add_done_callback(removed)

    def _read(self, path: Path) -> tuple[ev.Event | None, dict[str, str], bool]:
        """The event in ``path`` and its headers, or its substitute; and whether the file was unreadable."""
        try:
            return *decode(path.read_bytes()), False
        except FileNotFoundError:
            return None, {}, False
        except (OSError, ValueError) as err:
            # Atomic writes do not leave such a file; a damaged disk or a hand in the folder does.
            name = parse_name(path.name) or Name(0, None, 0, "")
            event = self._substitute(name.job_id, name.run, name.kind, str(err)) if self._substitute else None
            log.error(
                "outbox: unreadable event; publishing its substitute" if event else "outbox: unreadable event",
                extra={"file": path.name, "error": str(err), "substitute": event.type if event else None},
            )
            return event, {}, True

    async def _publish_file(self, path: Path) -> bool | Exception:
        """Publish one file: True once published (a damaged one set aside), False when there was
        nothing to publish, or the exception of a failed publish."""
        event, headers, damaged = self._read(path)
        if event is None:
            if damaged:
                self._set_aside(path, "unreadable")
            return False
        try:
            if self._before_publish is not None:
                await self._before_publish(event)
            await self._publish(event, headers)
        except Exception as err:
            return err
        if damaged:  # kept for a human; a restart before this publishes the substitute again (deduped)
            self._set_aside(path, "unreadable; its substitute was published")
            return False
        return True

    async def _failed(self, path: Path, err: Exception) -> None:
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

    async def _send(self, path: Path) -> bool:
        result = await self._publish_file(path)
        if isinstance(result, Exception):
            await self._failed(path, result)
            return False
        self._backoff.reset()
        if result:
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
