"""Events the executor owes the log, kept on disk until the stream has acknowledged them.

One file per event, ``<seq>-<job>-<type>.json`` (``<seq>-<job>r<run>-<type>.json`` for a job's
runs after a requeue: two runs of one job are two jobs' worth of reports), written atomically (tmp,
fsync, rename, fsync the folder), so an outcome survives NATS being away for any time and the
executor restarting meanwhile.
One publisher drains the files in ``seq`` order, which keeps the order the rest of the system relies on
(a job's JobStarted before its outcome). Every event carries a Nats-Msg-Id (``subjects.dedupe_id``),
so a publish whose ack was lost and is sent again is stored once.

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
import json
import logging
import os
import re
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from conductor_contracts import events as ev
from conductor_platform import tracing
from conductor_platform.retry import Backoff, pause

log = logging.getLogger("conductor.executor.outbox")


# Bounded (a stream sequence, hence a job id, is a uint64: at most 20 digits) so that a stray name
# cannot make an absurd number.
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
    ) -> None:
        self.folder, self._publish, self._backoff = folder, publish, backoff
        self._substitute = substitute
        self._before_publish = before_publish
        # Files that could not be set aside (the folder refuses renames): skipped, not retried.
        self._ignored: set[str] = set()
        self._wake = asyncio.Event()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._tidy()
        except OSError as err:  # every put retries; the executor must start and say why it waits
            log.error("outbox folder unusable", extra={"folder": str(folder), "error": str(err)})
        self._seq = max((seq for seq, _ in self._entries()), default=0)

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
            else:
                try:
                    regular = stat.S_ISREG(path.lstat().st_mode)
                except OSError:
                    regular = False
                if not regular:
                    self._set_aside(path, "not a regular file")

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
        found = []
        for path in self.folder.glob("*.json"):
            parsed = parse_name(path.name)
            if parsed is not None and path.name not in self._ignored:
                found.append((parsed.seq, path))
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
        tmp = self.folder / f".{name}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / name)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(self.folder)

    def put(self, event: ev.Event, traceparent: str | None = None) -> None:
        """Durable when it returns; raises OSError when the folder cannot take it. Synchronous on
        purpose: a caller that writes its ``done`` marker right after cannot be interleaved with the
        publisher deleting the file. ``traceparent``: published with the event."""
        seq = self._seq + 1
        self._write(file_name(seq, event), encode(event, traceparent))
        self._seq = seq
        self._wake.set()

    async def keep(self, event: ev.Event, stop: asyncio.Event, traceparent: str | None = None) -> bool:
        """``put`` until it is written (True) or ``stop`` is set (False): a full or read-only disk
        delays what the executor owes, it does not drop it. At least one try, even when stopping."""
        backoff = Backoff(self._backoff.low_s, self._backoff.high_s)
        while True:
            try:
                self.put(event, traceparent)
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
        files = self._entries()
        if not files:
            await self._wake.wait()
            return
        for _, path in files:
            if not await self._send(path):
                return

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

    async def _send(self, path: Path) -> bool:
        event, headers, damaged = self._read(path)
        if event is None:
            if damaged:
                self._set_aside(path, "unreadable")
            return True
        try:
            if self._before_publish is not None:
                await self._before_publish(event)
            await self._publish(event, headers)
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
        if damaged:  # kept for a human; a restart before this publishes the substitute again (deduped)
            self._set_aside(path, "unreadable; its substitute was published")
        else:
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
