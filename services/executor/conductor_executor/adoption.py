"""What a starting executor makes of a job an earlier one left not done (``supervision.mark_done``).

- its supervisor still runs (the pid of ``process.json``, with the same start time): taken over,
  ``Running``; the job is watched, limited and reported as if this executor had started it;
- its supervisor is gone but recorded the job's exit: ``Ended``, reported with that status and time;
  if an earlier executor killed it, what left the job's group is killed (``leftovers.kill_marked``);
- its supervisor is gone without a record (killed with the job, or a reboot): ``Lost``, NODE_FAIL;
  what may be left of the job is killed: its group if its ``status`` record names it, and, record or
  not, every process with the job's mark in its environment (``leftovers.kill_marked``);
- no usable ``process.json`` (the executor died between the spawn and the record): ``Unrecorded``,
  looked for by command line and by its mark, killed, NODE_FAIL (``leftovers.kill_unrecorded``);
- an older executor's record (the job was its child, without supervisor): killed, NODE_FAIL;
- a run the scheduler ended (killed as ``lost`` after a NodeLost, see ``liveness.py``) whose
  supervisor is gone: ``Dropped``, marked done and reported nothing; still running, it is taken over
  to finish the kill, and reported nothing either.

Folders are per run (``supervision.folder_name``); everything here is keyed by ``(job, run)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conductor_executor import supervision as sv
from conductor_executor.leftovers import kill_group, kill_leftovers, kill_marked, script_forms, start_time
from conductor_executor.process import JobProcess, watch_pidfd

log = logging.getLogger("conductor.executor")

LOST_UNSUPERVISED = "the executor stopped while the job ran; its outcome is unknown"
LOST_SUPERVISOR = "the job's supervisor ended without recording the job's exit (killed?); its outcome is unknown"


@dataclass(frozen=True)
class Running:
    process: JobProcess
    record: sv.ProcessRecord


@dataclass(frozen=True)
class Ended:
    exit: sv.ExitRecord
    reasons: frozenset[str]
    record: sv.ProcessRecord | None


@dataclass(frozen=True)
class Lost:
    message: str
    # Why its executor was killing it, if it was: what the outcome says (``outcomes.outcome_event``).
    reasons: frozenset[str] = frozenset()
    # Its supervisor's record, when there is one: a start it owes is reported before the loss.
    record: sv.ProcessRecord | None = None


@dataclass(frozen=True)
class Unrecorded:
    pass


@dataclass(frozen=True)
class Dropped:
    pass


Found = Running | Ended | Lost | Unrecorded | Dropped
# A job's run: ``(job id, JobPlaced.run)``.
Key = tuple[int, int]


def _has_exited(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def open_supervisor(record: sv.ProcessRecord) -> int | None:
    """A pidfd of the recorded supervisor if it still runs, else None. Opened first, checked after:
    the pidfd holds that very process, so a pid reused since cannot slip in between."""
    if record.started is None:  # its start time could not be read: the pid alone proves nothing
        return None
    try:
        fd = os.pidfd_open(record.pid)
    except OSError:
        return None
    if start_time(record.pid) != record.started or _has_exited(fd):
        os.close(fd)
        return None
    return fd


def kill_orphaned_job(folder: Path, record: sv.ProcessRecord) -> None:
    """The job's group, if its supervisor died and left it and its ``status`` record names it: only a
    group whose leader started after the supervisor did (a pid is reused only once its group is gone).
    The processes of the job that no record names are found by their mark (``Stock.leftovers``)."""
    if record.started is not None:
        kill_group(sv.read_pgid(folder), record.started)


def _floor(record: sv.ProcessRecord | None, folder: Path) -> float | None:
    """The earliest a process of the job can have started (wall clock): its supervisor's start, or
    without a record the time its script was written (before the supervisor started); None if
    neither is known."""
    if record is not None and (record.started or record.start):
        return record.started or record.start
    try:
        return (folder / "script.sh").stat().st_mtime
    except OSError:
        return None


def survey(folder: Path, job_id: int, grace_s: float, run: int = 0) -> Found:
    """Synchronous and quick: the files of one job and a look at one process."""
    record = sv.read_process(folder)
    if record is None:
        ended = sv.read_exit(folder)
        if ended is not None:  # it ran to its end without the executor's record: it ran all the same
            return Ended(ended, sv.read_kill(folder), None)
        return Unrecorded()
    if not record.supervised:
        kill_leftovers(folder / sv.PROCESS)
        return Lost(LOST_UNSUPERVISED)
    fd = open_supervisor(record)
    if fd is not None:
        process = JobProcess(
            job_id,
            record.pid,
            folder,
            record.start,
            grace_s,
            record.memory_mb,
            watch_pidfd(fd),
            reasons=sv.read_kill(folder),
            run=run,
            placed_seq=record.placed_seq,
            requeue=record.requeue,
            traceparent=record.traceparent,
        )
        return Running(process, record)
    # Gone: the record it wrote on its way out, if any, was written before it exited.
    # What is left of the job's group is killed by ``take_stock``, after the look for its mark.
    if sv.LOST in sv.read_kill(folder):
        return Dropped()
    ended = sv.read_exit(folder)
    if ended is not None:
        return Ended(ended, sv.read_kill(folder), record)
    return Lost(LOST_SUPERVISOR, sv.read_kill(folder), record)


@dataclass
class Stock:
    """What a start found, by what is to be done with it."""

    running: list[Running] = field(default_factory=list)
    ended: dict[Key, Ended] = field(default_factory=dict)
    lost: dict[Key, Lost] = field(default_factory=dict)
    # Command lines of the jobs without a record, for ``leftovers.kill_unrecorded``: (job, written).
    unrecorded: dict[str, tuple[int, float]] = field(default_factory=dict)
    # The marks of the jobs whose supervisor is gone (or was never recorded), and the earliest a
    # process of each can have started: what is left of them is killed (``leftovers.kill_marked``).
    leftovers: dict[str, float | None] = field(default_factory=dict)
    # The jobs whose supervisor is gone without a record of the job's end, with the record of that
    # supervisor: the group its ``status`` names is killed (``kill_orphaned_job``) after the look for
    # the marks, while the job's bash still leads its session and finds what in it dropped the mark.
    orphans: list[tuple[Path, sv.ProcessRecord]] = field(default_factory=list)


def _folders(jobs_dir: Path) -> list[tuple[Key, Path]]:
    found = []
    for path in jobs_dir.iterdir():
        key = sv.parse_folder_name(path.name)
        if key is not None:
            found.append((key, path))
    return sorted(found)


def take_stock(jobs_dir: Path, holds_outcome: Callable[[int, int], bool], grace_s: float) -> Stock:
    """Every job folder without a ``done`` marker, surveyed in (job, run) order. ``holds_outcome``:
    the outbox has that run's outcome already (the executor stopped between it and the marker):
    marked done."""
    stock = Stock()
    try:
        folders = _folders(jobs_dir)
    except OSError as err:
        log.error("cannot look for jobs of a previous executor", extra={"error": str(err)})
        return stock
    for (job_id, run), folder in folders:
        if sv.read_done(folder) is not None:
            continue
        if holds_outcome(job_id, run):
            with contextlib.suppress(OSError):  # if not now, at the next start
                sv.mark_done(folder, "outbox")
            continue
        found = survey(folder, job_id, grace_s, run)
        # And a job an earlier executor killed, that ended meanwhile: its supervisor killed the job's
        # group, not a child that left it (``setsid``).
        if isinstance(found, Lost | Dropped | Unrecorded) or (isinstance(found, Ended) and found.reasons):
            record = sv.read_process(folder)
            stock.leftovers[sv.mark_of(folder)] = _floor(record, folder)
            gone = isinstance(found, Dropped) or (isinstance(found, Lost) and found.message == LOST_SUPERVISOR)
            if gone and record is not None:
                stock.orphans.append((folder, record))
        match found:
            case Running() as running:
                stock.running.append(running)
            case Ended() as ended:
                stock.ended[job_id, run] = ended
            case Lost() as lost:
                stock.lost[job_id, run] = lost
            case Dropped():
                with contextlib.suppress(OSError):
                    sv.mark_done(folder, sv.LOST)
            case Unrecorded():
                stock.lost[job_id, run] = Lost(LOST_UNSUPERVISED)
                script = folder / "script.sh"
                with contextlib.suppress(OSError):
                    written = script.stat().st_mtime
                    stock.unrecorded.update(dict.fromkeys(script_forms(script), (job_id, written)))
    if stock.leftovers:
        # One look at the process table for every such job, before any of them is reported.
        try:
            kill_marked(stock.leftovers)
        except Exception:  # what can be reported still is
            log.exception("looking for what is left of lost jobs failed")
    for folder, record in stock.orphans:
        with contextlib.suppress(OSError):
            kill_orphaned_job(folder, record)
    return stock
