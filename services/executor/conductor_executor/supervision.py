"""What keeps a job and its outcome when the executor is gone: a per-job shell supervisor, and the
records it and the executor leave in the job's folder (``jobs/<id>/``).

The executor starts ``/bin/sh -c WRAPPER`` in a session of its own; that shell (the job's supervisor,
like Slurm's slurmstepd) starts the job, ``/bin/bash script.sh``, through ``setsid`` in a session
and process group of its own, waits for it and writes its exit status. So:

- the job is not the executor's child and shares no group, session or pipe with it: SIGKILL of the
  executor, Ctrl-C in its terminal or its stdout closing touch neither the job nor its supervisor;
- the supervisor is outside the job's group, so every kill (time limit, cancel, memory) goes to the
  whole job group and the supervisor lives on to record how the job ended;
- a restarted executor finds the supervisor by ``process.json`` and waits for it, or finds the
  ``exit`` record it left, and reports the job's real exit status and end time;
- every process of the job carries ``MARK`` (its folder) in its environment: a supervisor gone
  without a record, even of the job's group (killed before it wrote it), leaves nothing running that
  cannot be found (``leftovers.kill_marked``).

Two forms do this: ``supervisor.c``, a small program built where a C compiler is at hand
(``compiled.py``), and the shell form, ``WRAPPER``, where there is none. Not Python: an interpreter
costs ~35 ms of CPU per job here. The shell form starts three programs per job (``/bin/sh``,
``setsid``, then bash: ``setsid`` gives the job its group because a shell without a terminal cannot,
``set -m`` needs one in dash, and bash as the supervisor costs more than both); the compiled one
starts itself and bash, ~1.5 ms less CPU per job. The shell form also starts the job with SIGINT and
SIGQUIT ignored (a background command of a shell without job control); the compiled one does not.

Records, each line one small ``write()`` (a process crash leaves it whole or missing, never half
a number; an empty, unfinished or malformed line counts as missing):

- ``status`` by the supervisor, two lines: ``pgid N``, the job's process group (= its pid), as soon
  as it is forked; then, appended, ``exit N``, the job's exit status (128 + n for signal n); its mtime
  is the end. One file where there were two (``pgid`` and ``exit``, which supervisors started by an
  earlier executor still write, and which are read when there is no ``status``): a file created is
  the dearest thing a job costs here (``outbox.py``);
- ``kill``   by the executor, before it signals the job: why (``cancelled``, ``timeout``, ``oom``;
  ``lost``: the scheduler declared the node lost and ended this run, nothing is reported for it;
  ``fenced``: killed because the executor could not heartbeat, see ``liveness.py``), so that an
  executor restarted mid-kill reports the right state;
- ``process.json`` by the executor: the supervisor's pid and start time, the job's limits, the
  stream sequence of its placement and whether it asked to be requeued; later, rewritten in place,
  that its JobStarted is in the outbox and then that the job is done (its outcome is in the outbox).
- ``done`` by the executor, only for a job without a usable ``process.json`` (it never started, or
  the record could not be written) and for folders of earlier executors: the job is done.

A job's folder is per run (``folder_name``): a job requeued and placed on the same node again runs in
a folder of its own, so the records of the run the scheduler ended never stand for the new one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from conductor_platform import tracing

STATUS = "status"
# The supervisor's records before ``status``: still read, for jobs started by an earlier executor.
PGID = "pgid"
EXIT = "exit"
DONE = "done"
KILL = "kill"
PROCESS = "process.json"
# argv[0] of every supervisor: how a restarted executor recognises one in the process table.
ARGV0 = "conductor-job"
# In the environment of every job (and so of its supervisor and of every process it starts that keeps
# its environment): the job's folder, resolved (``mark_of``). What finds the job's processes when no
# record of its supervisor's says where they are (``leftovers.kill_marked``); a folder is one job's
# run on one node of one executor, so no process of another executor's job, on this machine, has it.
MARK = "CONDUCTOR_JOB_DIR"
# The CPUs a compiled supervisor moves itself to before it starts the job (supervisor.c); not the job's.
CPUS = "CONDUCTOR_SUPERVISOR_CPUS"

# $1: the job's script, in the folder that holds its records; $2: the setsid program.
# - stderr of the shell itself goes to /dev/null (its notices must not land in the job's file),
#   the job gets the real one back from fd 3;
# - after the job ends, what it left in its group is killed (as Slurm does at a step's end), with
#   the builtin kill: no program started for it.
WRAPPER = """\
d=${1%/*}
exec 3>&2 2>/dev/null
"$2" /bin/bash "$1" 2>&3 3>&- &
j=$!
echo "pgid $j" >"$d/status"
wait "$j"
c=$?
kill -9 -"$j"
echo "exit $c" >>"$d/status"
"""
# Room left after process.json's text for the rewrites that make it longer (``mark_done``).
_ROOM = 40

KILL_REASONS = ("cancelled", "timeout", "oom", "lost", "fenced", "stopped", "replaced")
# The run of a job that the scheduler ended (NodeLost): killed, and nothing is reported for it.
LOST = "lost"
# Killed by its own executor after a silence it could not end (``liveness.py``).
FENCED = "fenced"
# Killed by its executor's stop (``stop_jobs_on_exit``): the node went away under it.
STOPPED = "stopped"
REPLACED = "replaced"  # another executor of the node took it over (``Executor.taken_over``)


@functools.lru_cache(maxsize=64)
def _resolved(jobs_dir: Path) -> Path:
    return jobs_dir.resolve()


def mark_of(folder: Path) -> str:
    """The value of ``MARK`` for the job of ``folder``: the same, whatever the spelling of the path
    the executor was given (and from wherever it runs)."""
    return str(_resolved(folder.parent) / folder.name)


def folder_name(job_id: int, run: int) -> str:
    """``<job>`` for its first run (the name folders had before runs, so an executor upgraded under a
    running job still finds it), ``<job>.<run>`` for the runs after a requeue."""
    return str(job_id) if run == 0 else f"{job_id}.{run}"


def parse_folder_name(name: str) -> tuple[int, int] | None:
    """``(job, run)`` of a job folder's name, or None for anything else in the jobs folder."""
    job, dot, run = name.partition(".")
    if not job.isascii() or not job.isdigit() or len(job) > 20:
        return None
    if not dot:
        return int(job), 0
    if not run.isascii() or not run.isdigit() or len(run) > 10 or run.startswith("0"):
        return None
    return int(job), int(run)


def _number(text: str) -> int | None:
    """A record's one number, or None: empty (written to when it was cut short), or anything else."""
    if not text.endswith("\n"):
        return None
    text = text[:-1]
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        return None
    return int(text)


def parse_exit(text: str) -> int | None:
    """The exit status in an ``exit`` record; statuses are 0..255 (128 + n after signal n)."""
    code = _number(text)
    return code if code is not None and code <= 255 else None


def parse_pgid(text: str) -> int | None:
    """The job's group in a ``pgid`` record. Never 0 or 1: ``killpg`` of those would hit the
    executor's own group or everything; a damaged record must not be able to ask for that."""
    pgid = _number(text)
    return pgid if pgid is not None and pgid > 1 else None


def parse_kill(text: str) -> frozenset[str]:
    return frozenset(word for word in text.split() if word in KILL_REASONS)


def parse_status(text: str) -> tuple[int | None, int | None]:
    """``(pgid, exit status)`` of a ``status`` record, each None when its line is missing. Only
    finished lines count: a supervisor killed amid a write leaves at worst an unfinished last one.
    Each line says what it holds: an ``exit`` appended to a file whose ``pgid`` line was never
    written must not be taken for a group to kill."""
    pgid = code = None
    for line in text.split("\n")[:-1]:
        word, _, number = line.partition(" ")
        if word == "pgid" and pgid is None:
            pgid = parse_pgid(number + "\n")
        elif word == "exit" and code is None:
            code = parse_exit(number + "\n")
    return pgid, code


# A record is a line or two; a job can put anything at a record's name in its own folder (a FIFO, a
# link to /dev/zero, a huge file): it is read as missing, never followed, waited on or read whole.
_RECORD_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_RECORD_MAX = 65536


def _open_record(path: Path) -> int | None:
    """A descriptor of the regular file at ``path``, None when there is none."""
    try:
        fd = os.open(path, _RECORD_FLAGS)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _read(path: Path) -> str | None:
    fd = _open_record(path)
    if fd is None:
        return None
    try:
        return os.read(fd, _RECORD_MAX).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_status(folder: Path) -> tuple[str, float] | None:
    """The ``status`` record's text and its mtime, None when there is none. Read before its mtime
    is taken: a text that holds the exit line was read after the append that set that mtime."""
    fd = _open_record(folder / STATUS)
    if fd is None:
        return None
    try:
        data = os.read(fd, 4096)
        return data.decode("ascii", "replace"), os.fstat(fd).st_mtime
    except OSError:
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ExitRecord:
    code: int
    ended_at: float  # wall clock (seconds since the epoch): when the supervisor saw the job end


def read_exit(folder: Path) -> ExitRecord | None:
    """The job's exit as its supervisor recorded it, or None (not ended, or no usable record)."""
    status = _read_status(folder)
    if status is not None:
        code = parse_status(status[0])[1]
        return None if code is None else ExitRecord(code, status[1])
    return _read_legacy_exit(folder)


def _read_legacy_exit(folder: Path) -> ExitRecord | None:
    path = folder / EXIT
    try:
        ended_at = path.stat().st_mtime
    except OSError:
        return None
    text = _read(path)
    code = parse_exit(text) if text is not None else None
    return None if code is None else ExitRecord(code, ended_at)


def read_pgid(folder: Path) -> int | None:
    status = _read_status(folder)
    if status is not None:
        return parse_status(status[0])[0]
    text = _read(folder / PGID)
    return parse_pgid(text) if text is not None else None


def read_kill(folder: Path) -> frozenset[str]:
    text = _read(folder / KILL)
    return parse_kill(text) if text is not None else frozenset()


def write_kill(folder: Path, reasons: frozenset[str]) -> None:
    """Replaced whole (tmp, rename): a reader sees the old reasons or the new ones."""
    _replace_record(folder, KILL, " ".join(sorted(reasons)) + "\n")


def _replace_record(folder: Path, name: str, text: str) -> None:
    """``text`` in place of whatever is at ``name`` in a job's folder, which the job can write: a new
    file of a name no one had (never a FIFO, a link or a file a job made, which an open would wait
    on or follow), renamed over it; a folder the job made there is removed first."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
    try:
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        target = folder / name
        try:
            os.replace(tmp, target)
        except OSError as err:
            if err.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class ProcessRecord:
    """``process.json``: what a restarted executor needs to take a job over."""

    pid: int  # the supervisor's
    started: float | None  # its start time as the kernel says (``leftovers.start_time``): its identity
    start: float = 0.0  # wall clock at the spawn: the time limit counts from it
    time_limit_s: int | None = None
    memory_mb: int = 0
    cores: tuple[int, ...] = ()
    announced: bool = True  # its JobStarted is in the outbox
    supervised: bool = False  # False: an older executor's record, of a job that was its own child
    # The stream sequence of the placement: a NodeLost stored after it ended this run (None: an older
    # executor's record, which no NodeLost kills: the job ends as it ends).
    placed_seq: int | None = None
    requeue: bool = False  # the job asked to be requeued: killed when the executor fences itself
    # Its placement's W3C traceparent: a restarted executor reports the outcome in the job's trace.
    traceparent: str | None = None
    # What the ``done`` marker held: the type of the outcome in the outbox (or ``lost``...); None: not
    # done yet.
    done: str | None = None
    # The record says whether the job is done (every record this executor writes does): a ``done``
    # file beside it is then not the executor's and means nothing (the job may write in its folder).
    tracks_done: bool = True

    def to_json(self) -> str:
        return json.dumps(
            {
                "pid": self.pid,
                "started": self.started,
                "start": self.start,
                "time_limit_s": self.time_limit_s,
                "memory_mb": self.memory_mb,
                "cores": list(self.cores),
                "announced": self.announced,
                "supervised": self.supervised,
                "placed_seq": self.placed_seq,
                "requeue": self.requeue,
                "traceparent": self.traceparent,
                "done": self.done,
            }
        )


def _opt_int(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        raise TypeError("not an integer")
    return value


def parse_process(text: str) -> ProcessRecord | None:
    """``process.json``, or None when it is not one (damaged, or a hand in the folder)."""
    try:
        data = json.loads(text)
        pid = data["pid"]
        started = data.get("started")
        if type(pid) is not int or pid <= 1 or not isinstance(started, (int, float, type(None))):
            return None
        cores = tuple(data.get("cores", ()))
        if not all(type(core) is int for core in cores):
            return None
        return ProcessRecord(
            pid=pid,
            started=None if started is None else float(started),
            start=float(data.get("start", 0.0)),
            time_limit_s=_opt_int(data.get("time_limit_s")),
            memory_mb=_opt_int(data.get("memory_mb")) or 0,
            cores=cores,
            announced=data.get("announced", True) is True,
            supervised=data.get("supervised", False) is True,
            placed_seq=_opt_int(data.get("placed_seq")),
            requeue=data.get("requeue", False) is True,
            traceparent=tracing.valid(tp) if isinstance(tp := data.get("traceparent"), str) else None,
            done=done if isinstance(done := data.get("done"), str) else None,
            tracks_done="done" in data,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def read_process(folder: Path) -> ProcessRecord | None:
    text = _read(folder / PROCESS)
    return parse_process(text) if text is not None else None


def write_process(folder: Path, record: ProcessRecord) -> None:
    """Followed by room for the rewrites that make it longer (``mark_done``): JSON ignores spaces,
    and a rewrite within the file's blocks does not have to find the disk another one."""
    (folder / PROCESS).write_text(record.to_json() + " " * _ROOM)


def _update(folder: Path, **changes: object) -> bool:
    """``process.json`` read back and written over in place with ``changes``, in one ``pwrite`` at
    least as long as the old text (padded: JSON ignores spaces), never truncated first: a process
    killed meanwhile leaves the old record or the new one, never none. Read back, not taken from
    memory: it may have been rewritten since it was written. False when there is no usable record."""
    try:
        fd = os.open(folder / PROCESS, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as err:
        if err.errno in (errno.EIO, errno.ENOSPC, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            raise  # the disk or this process: tried again
        return False  # a link, a folder, a socket the job put there: no record of ours
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO...: no record of ours either
            return False
        old = os.read(fd, 65536)
        record = parse_process(old.decode("ascii", "replace"))
        if record is None:
            return False
        new = dataclasses.replace(record, **changes).to_json().encode()  # type: ignore[arg-type]
        os.pwrite(fd, new.ljust(len(old)), 0)
        return True
    finally:
        os.close(fd)


def mark_announced(folder: Path) -> None:
    """The job's JobStarted is in the outbox (ValueError: its record is unusable)."""
    if not _update(folder, announced=True):
        raise ValueError("the job's process record is unusable")


def mark_done(folder: Path, what: str) -> None:
    """The job is done (``what``: its outcome's type, or why nothing is reported): said in its
    ``process.json``, so that a job's end creates no file; in a ``done`` file when there is no usable
    record to say it in (the job never started, or its record could not be written)."""
    try:
        # Done owes nothing: its JobStarted, if any, went into the outbox before its outcome did.
        if _update(folder, done=what, announced=True):
            return
    except FileNotFoundError:
        pass
    _replace_record(folder, DONE, what)


def read_done(folder: Path) -> str | None:
    """What the job's ``done`` marker says (``mark_done``), None while it is not done: its record's,
    and a ``done`` file only where there is no record that says (a job that never started, a folder
    of an earlier executor)."""
    record = read_process(folder)
    if record is not None and record.tracks_done:
        return record.done
    text = _read(folder / DONE)
    if text is not None:
        return text
    return None if record is None else record.done
