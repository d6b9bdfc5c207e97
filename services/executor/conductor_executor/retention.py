"""Finished jobs' folders removed after a retention, so that neither a node's disk nor an executor's
start (which surveys every folder, ``adoption.take_stock``) grows with every job the node ever ran.

A folder is removed once all of these hold:

- its job is done (``supervision.read_done``), and was marked so at least ``retention_s`` ago (the
  mtime of the record that says so);
- nothing about its run is owed in the outbox any more: its outcome, and the output uploaded right
  before it (read through the folder's records), are published;
- its placement can never be delivered again. Until then the folder is what stops a redelivered
  placement from starting the job a second time (``Executor._superseded``). A sweep lists the folders
  first and then reads the consumer's position, so each folder listed was made for a message delivered
  at or before that position's ``delivered`` sequence; once a later sweep reads an ack floor at or past
  it, every such message is acked and none of them comes back. So a folder goes at the earliest one
  sweep after it was listed.

A folder is renamed out of the jobs' names (``.gone-...``) before it is removed: an executor killed
halfway through a removal must not find half a job's records at its next start and report that job a
second time. What such a kill leaves is removed by the next sweep.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conductor_executor import supervision as sv
from conductor_executor.leftovers import kill_marked
from conductor_platform.bus import Bus
from conductor_platform.retry import pause

log = logging.getLogger("conductor.executor.retention")

Key = tuple[int, int]
# Names of folders being removed: never a job's (``supervision.parse_folder_name``).
GONE = ".gone-"


@dataclass(frozen=True)
class Position:
    """The executor's consumer, as the server last said: the newest stream sequence it delivered, and
    the one up to which every message it delivered is acked."""

    delivered: int
    ack_floor: int


class FolderSweep:
    """What one sweep needs of the one before it. Blocking methods: the executor calls them from a
    worker thread."""

    def __init__(self, jobs_dir: Path, retention_s: float) -> None:
        self.jobs_dir = jobs_dir
        self.retention_s = retention_s
        # The job folders there were when the position was last read, and what it said was delivered.
        self._listed: dict[str, Key] = {}
        self._delivered: int | None = None
        # ``.gone-`` folders already reported as not removable whole: warned about once, not per sweep.
        self._stuck: set[str] = set()

    def listing(self) -> dict[str, Key]:
        """The job folders there are now, by name; what a removal cut short is removed on the way."""
        found: dict[str, Key] = {}
        gone: set[str] = set()
        for path in self.jobs_dir.iterdir():
            if path.name.startswith(GONE):
                gone.add(path.name)
                self._remove(path)
                continue
            key = sv.parse_folder_name(path.name)
            if key is not None:
                found[path.name] = key
        self._stuck &= gone  # one that something else removed is no longer owed a warning
        return found

    def settled(self, listed: dict[str, Key], position: Position) -> dict[str, Key]:
        """Of the folders ``listed`` (before ``position`` was read), those whose placement is acked for
        good: listed by the sweep before as well, and every message delivered by then is acked now."""
        ready: dict[str, Key] = {}
        if self._delivered is not None and position.ack_floor >= self._delivered:
            ready = {name: key for name, key in listed.items() if name in self._listed}
        self._listed, self._delivered = listed, position.delivered
        return ready

    def expired(self, folders: dict[str, Key], now: float, busy: set[Key]) -> dict[str, Key]:
        """Of ``folders``, those of runs done for at least the retention (``busy``: runs this executor
        holds; never theirs). A record that says whether its run is done is read only once its mtime,
        which is at least as late as the done mark, is old enough: a sweep does not read every folder
        of the retention's span each time."""
        found: dict[str, Key] = {}
        for name, key in folders.items():
            if key in busy:
                continue
            folder = self.jobs_dir / name
            try:
                record_at = _mtime(folder / sv.PROCESS)
                if record_at and now - record_at < self.retention_s:
                    continue
                record = sv.read_process(folder)
                if record is not None and record.tracks_done:
                    done, marked = record.done, record_at
                else:  # no record (never started), or an earlier executor's: its done file
                    done, marked = sv.read_done(folder), max(record_at, _mtime(folder / sv.DONE))
            except OSError:
                continue
            if done is not None and now - marked >= self.retention_s:
                found[name] = key
        return found

    def _remove(self, path: Path) -> None:
        """Tried again at every sweep; the operator is told once per folder."""
        if _removed(path):
            self._stuck.discard(path.name)
        elif path.name not in self._stuck:
            self._stuck.add(path.name)
            log.warning(
                "a finished job's folder could not be removed whole; it is tried again at every sweep",
                extra={"folder": str(path)},
            )

    def remove(self, names: list[str]) -> int:
        """How many of these folders went (one another process removed is not counted). What still
        runs with one of their marks is killed first: a job that made its own records say it was done
        (it can write in its folder) is not left running once nothing would find it any more."""
        kill_marked({sv.mark_of(self.jobs_dir / name): None for name in names})
        removed = 0
        for name in names:
            target = self.jobs_dir / f"{GONE}{name}"
            try:
                os.rename(self.jobs_dir / name, target)
            except OSError as err:
                if not isinstance(err, FileNotFoundError):
                    log.warning("could not remove a finished job's folder", extra={"folder": name, "error": str(err)})
                continue
            self._remove(target)
            removed += 1
        return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _removed(path: Path) -> bool:
    """Whatever the job left in its folder too; links are removed, never followed. False when some
    of it could not be (a job's file in a folder of its own it made read-only, for an executor that
    is not root): that stays under its ``.gone-`` name."""
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.lexists(path)


async def keep_bounded(
    sweep: FolderSweep,
    bus: Bus,
    durable: str,
    busy: Callable[[], set[Key]],
    owed: Callable[[], set[Key]],
    every_s: float,
    stop: asyncio.Event,
) -> None:
    """Sweep every ``every_s`` until ``stop``. ``busy``: the runs the executor holds; ``owed``: the
    runs the outbox still has something of (read from the disk: called in a worker thread). No error
    ends the loop: a sweep that fails is tried again at the next."""
    while not stop.is_set():
        await pause(stop, every_s)
        if stop.is_set():
            return
        try:
            removed = await sweep_once(sweep, bus, durable, busy, owed)
        except Exception as err:  # NATS away, a folder unreadable...: the folders wait for the next sweep
            log.warning("sweeping finished jobs' folders failed", extra={"error": str(err)[:200]})
            continue
        if removed:
            log.info("finished jobs' folders removed", extra={"count": removed})


async def sweep_once(
    sweep: FolderSweep, bus: Bus, durable: str, busy: Callable[[], set[Key]], owed: Callable[[], set[Key]]
) -> int:
    listed = await asyncio.to_thread(sweep.listing)
    info = await bus.js.consumer_info(bus.stream, durable)
    position = Position(delivered=info.delivered.stream_seq or 0, ack_floor=info.ack_floor.stream_seq or 0)
    ready = sweep.settled(listed, position)
    if not ready:
        return 0
    expired = await asyncio.to_thread(sweep.expired, ready, time.time(), busy())
    # Read after the folders' done markers: an outcome is in the outbox before its job is marked
    # done, so a run done then and not owed now has its outcome published.
    still_owed = await asyncio.to_thread(owed)
    return await asyncio.to_thread(sweep.remove, [name for name, key in expired.items() if key not in still_owed])
