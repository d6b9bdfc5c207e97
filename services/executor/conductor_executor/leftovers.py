"""What an earlier executor left running that cannot be taken over: found by its pid record or,
without one, by its command line, and killed only if it is still that job (pids and paths are reused)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path

import psutil

from conductor_executor.supervision import ARGV0, MARK, mark_of, read_pgid
from conductor_platform.retry import pause

log = logging.getLogger("conductor.executor")

# psutil derives a process's start time from the boot time, which /proc gives in whole seconds.
_CLOCK_SLACK_S = 2.0


def start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def kill_leftovers(record: Path) -> bool:
    """Kill what is left of a job an earlier executor ran, if it is still that job: a pid recorded
    before a reboot may belong to something else now, so its start time must match too. False when
    there is no usable record: the job must be looked for otherwise."""
    try:
        info = json.loads(record.read_text())
        pid, started = int(info["pid"]), info.get("started")
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if started is None:  # its start time could not be read: the pid alone proves nothing
        return False
    if start_time(pid) != started:
        return True
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return True


def _supervised_script(cmdline: list[str]) -> str | None:
    """The script of a job's supervisor: ``conductor-job <script>`` (the compiled one, and its child in
    the instant before it becomes bash) or ``/bin/sh -c <wrapper> conductor-job <script> <setsid>``."""
    if len(cmdline) == 2 and cmdline[0] == ARGV0:
        return cmdline[1]
    if len(cmdline) == 6 and cmdline[:2] == ["/bin/sh", "-c"] and cmdline[3] == ARGV0:
        return cmdline[4]
    return None


def _job_script(cmdline: list[str]) -> str | None:
    """The script of a job: ``/bin/bash <script>``, or ``setsid /bin/bash <script>`` in the instant
    between its own session and bash."""
    if len(cmdline) == 2 and cmdline[0] == "/bin/bash":
        return cmdline[1]
    if len(cmdline) == 3 and cmdline[1] == "/bin/bash" and cmdline[0].endswith("setsid"):
        return cmdline[2]
    return None


def kill_unrecorded(scripts: dict[str, tuple[int, float]]) -> None:
    """Kill jobs an earlier executor spawned but died before recording (no ``process.json``): found by
    their command line. Supervisors first, so that none starts its job after the jobs were looked for.
    A process of that command line that started before the script was written is not that job (a pid
    and a path reused), so it is spared; so is one that is not the leader of its own group, as every
    job and supervisor is."""
    for script_of in (_supervised_script, _job_script):
        for proc in psutil.process_iter(["cmdline", "create_time"]):
            script = script_of(proc.info.get("cmdline") or [])
            if script is None or script not in scripts:
                continue
            job_id, written = scripts[script]
            created = proc.info.get("create_time")
            if created is None or created < written - _CLOCK_SLACK_S:
                continue
            try:
                if os.getpgid(proc.pid) != proc.pid:
                    continue
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
            log.warning(
                "killed a job its previous executor had not recorded", extra={"job_id": job_id, "pid": proc.pid}
            )


def script_forms(script: Path) -> set[str]:
    """The command-line spellings a job's script may have: jobs are spawned with an absolute path, but
    an older executor passed it as given, relative to where it ran."""
    forms = {str(script), str(script.absolute())}
    with contextlib.suppress(OSError, RuntimeError):
        forms.add(str(script.resolve()))
    return forms


# -- a job's processes by the mark in their environment ---------------------------------------------
# Every job's supervisor, and so every process of the job that keeps the environment it inherited,
# has ``supervision.MARK=<the job's folder>`` in its environment (``/proc/<pid>/environ``, which is
# what the process was started with: a process cannot take it back, only a program it starts with
# another environment loses it). A process that dropped it is still found while it stays in the
# session of a marked one (the job's bash leads the job's session). Only processes of this user are
# read (nobody else's environment is readable, or killable).

# Rounds of look-and-kill: a process forked between a look and its kill is found by the next look.
_ROUNDS = 5


def _ticks_per_s() -> int:
    return int(os.sysconf("SC_CLK_TCK"))


def _stat(pid: int) -> tuple[int, int] | None:
    """``(session, start)`` of a process from ``/proc/<pid>/stat``, its start in clock ticks since
    the boot (exact: what tells a process from a later one with the same pid); None when it is gone
    or a zombie (dead already, waiting for its parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    # The command name, in parentheses, may hold anything: the fields are after its last ')'.
    fields = text[text.rfind(b")") + 2 :].split()
    try:
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[3]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _marks_of(pid: int, wanted: dict[bytes, str]) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:  # gone, or not this user's
        return None
    if _MARK_PREFIX not in data:
        return None
    for entry in data.split(b"\0"):
        if entry in wanted:
            return wanted[entry]
    return None


_MARK_PREFIX = f"{MARK}=".encode()


def _victims(marks: dict[str, float | None], known: dict[int, str] | None = None) -> dict[int, tuple[str, int]]:
    """The processes of the jobs of ``marks`` (mark -> the earliest time a process of that job can
    have started, wall clock; None: unknown), each with its mark and its start in ticks: the marked
    ones that started late enough, and the members of their sessions that did. ``known``: sessions
    of those jobs that a record names (session -> mark), looked at also when no marked process is
    left in them (the job's bash, which leads the job's session, killed with the job's group)."""
    wanted = {_MARK_PREFIX + mark.encode(): mark for mark in marks}
    me, own_session = os.getpid(), os.getsid(0)
    boot, tick = psutil.boot_time(), _ticks_per_s()

    def late_enough(mark: str, start: int) -> bool:
        floor = marks[mark]
        return floor is None or boot + start / tick >= floor - _CLOCK_SLACK_S

    stats: dict[int, tuple[int, int]] = {}
    marked: dict[int, str] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for name in entries:
        if not name.isdigit() or (pid := int(name)) == me:
            continue
        stat = _stat(pid)
        if stat is None:
            continue
        stats[pid] = stat
        mark = _marks_of(pid, wanted)
        if mark is not None and late_enough(mark, stat[1]):
            marked[pid] = mark
    found = {pid: (mark, stats[pid][1]) for pid, mark in marked.items()}
    sessions: dict[int, str] = {}
    seeds = [(stats[pid][0], mark) for pid, mark in marked.items()] + list((known or {}).items())
    for session, mark in seeds:
        # Never this executor's session, nor one whose leader runs and is not the job's (a session
        # is created by its leader: a job's is created by a process of the job; a session's id is
        # not given to a new process while the session has members).
        if session <= 1 or session == own_session or (session in stats and session not in marked):
            continue
        sessions.setdefault(session, mark)
    for pid, (session, start) in stats.items():
        mark = sessions.get(session)
        if mark is not None and pid not in found and late_enough(mark, start):
            found[pid] = (mark, start)
    return found


def kill_marked(marks: dict[str, float | None], known: dict[int, str] | None = None) -> dict[str, list[int]]:
    """SIGKILL every process left of the jobs of ``marks`` (``supervision.mark_of`` of each job's
    folder -> the earliest time one of its processes can have started, wall clock, None when unknown),
    found by the mark in their environment without any record of the job's (``_victims``). Each is
    killed through a pidfd opened before its start time is checked again: a pid reused since it was
    looked at is not signalled. ``known``: sessions of those jobs a record names (``_victims``).
    Returns the pids killed, by mark."""
    killed: dict[str, list[int]] = {}
    if not marks:
        return killed
    # A process signalled may be found again before it is gone: it cannot fork any more, though.
    signalled: set[tuple[int, int]] = set()
    for _ in range(_ROUNDS):
        victims = {pid: found for pid, found in _victims(marks, known).items() if (pid, found[1]) not in signalled}
        if not victims:
            break
        for pid, (mark, start) in victims.items():
            signalled.add((pid, start))
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                stat = _stat(pid)
                if stat is None or stat[1] != start:
                    continue
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                killed.setdefault(mark, []).append(pid)
            except OSError:
                continue
            finally:
                os.close(fd)
    for mark, pids in killed.items():
        log.warning("killed what was left of a job", extra={"job": mark, "pids": pids})
    return killed


def kill_group(pgid: int | None, floor: float) -> None:
    """SIGKILL the job's group of a record (``pgid``), if its leader started no earlier than ``floor``
    (wall clock; a pid is reused only once its group is gone) and still leads that group."""
    if pgid is None:
        return
    try:
        leader = psutil.Process(pgid)
        if leader.create_time() < floor - _CLOCK_SLACK_S or os.getpgid(pgid) != pgid:
            return
        os.killpg(pgid, signal.SIGKILL)
    except (psutil.Error, ProcessLookupError, PermissionError):
        return


def kill_job_leftovers(folder: Path, floor: float) -> None:
    """What is left of a job whose supervisor is gone without recording its end: every process
    with its mark and of its session (``kill_marked_job``), record or not, then its group if its
    ``status`` record names it. In that order: the job's marked bash, which leads its session, is
    what finds a child in it that dropped the mark (``env -i``) and left the group; the group's
    kill would take the bash first. ``floor``: when its supervisor started (wall clock). Blocking:
    it reads ``/proc``."""
    kill_marked_job(folder, floor)
    kill_group(read_pgid(folder), floor)


def kill_marked_job(folder: Path, floor: float | None) -> None:
    """Every process with the mark of the job of ``folder`` and of its session (``kill_marked``),
    its session also when no marked process is left in it: the job's bash leads both its group and
    its session (``setsid``), so the group its ``status`` record names is the session's id."""
    mark, pgid = mark_of(folder), read_pgid(folder)
    kill_marked({mark: floor}, None if pgid is None else {pgid: mark})


def kill_left_by_ended(ended: dict[Path, float]) -> None:
    """What jobs that ended by themselves left running (``folder`` -> when its supervisor started):
    the supervisor killed the job's group, not a child that left it (``setsid``, ``setpgid``), which
    would run on, on cores given to other jobs. One look at ``/proc`` for all of them: the processes
    with a job's mark, and the members of their sessions. Not the session the job's ``status``
    names, as a look right after a kill does: its leader, the job's bash, is gone by now, and its id
    may have been given to another process's session since. So a child that dropped the mark and
    left the group is found only while a marked process of the job is in its session. Blocking: it
    reads ``/proc``."""
    kill_marked({mark_of(folder): floor for folder, floor in ended.items()})


async def sweep_ended(ended: dict[Path, float], every_s: float, stop: asyncio.Event) -> None:
    """Every ``every_s`` until ``stop``: ``kill_left_by_ended`` for the jobs added to ``ended`` since
    (taken out of it). A look that fails is logged and its jobs are looked for again at the next,
    up to ``_ENDED_KEPT`` of them: a look that always fails must not hold every job ever ended."""
    while not stop.is_set():
        await pause(stop, every_s)
        if not ended:
            continue
        batch = dict(ended)
        ended.clear()
        try:
            await asyncio.to_thread(kill_left_by_ended, batch)
        except Exception:
            log.exception("looking for what ended jobs left running failed", extra={"jobs": len(batch)})
            for folder, floor in batch.items():
                if len(ended) >= _ENDED_KEPT:
                    break
                ended.setdefault(folder, floor)


_ENDED_KEPT = 10_000
