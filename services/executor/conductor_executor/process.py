"""One job as the executor sees it: its supervisor (``supervision.py``), spawned by this executor or
taken over from an earlier one; waiting with a time limit, killing on demand.

Every kill goes to the job's whole process group (SIGTERM, a grace period, then SIGKILL), never to
the supervisor, which lives on to record the job's exit status. The outcome is read from that record,
the same way whether this executor started the job or found it running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from conductor_executor import supervision as sv
from conductor_executor.affinity import move_thread
from conductor_executor.leftovers import kill_job_leftovers, kill_marked_job

log = logging.getLogger("conductor.executor")

# How often a kill looks again for the job's group while the supervisor has not recorded it yet
# (it does so right after forking the job: this is a matter of microseconds).
_GROUP_POLL_S = 0.01


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None  # None: the supervisor ended without recording the job's exit
    ended_at: float | None  # wall clock, from the record
    reasons: frozenset[str]  # why the executor killed it, if it did


@dataclass
class JobProcess:
    job_id: int
    pid: int  # the supervisor's
    folder: Path
    start: float  # wall clock at the spawn
    grace_s: float
    memory_limit_mb: int
    exited: asyncio.Future[object]  # done when the supervisor has exited
    reasons: frozenset[str] = frozenset()  # why it is being killed (``supervision.KILL_REASONS``)
    run: int = 0  # which run of the job (``JobPlaced.run``): every event about it says so
    placed_seq: int | None = None  # its placement's stream sequence (None: unknown, an older record)
    requeue: bool = False  # submitted with requeue: true
    traceparent: str | None = None  # its placement's: the outcome's span is a child of it
    _killer: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def out_of_memory(self) -> bool:
        return "oom" in self.reasons

    def _signal_group(self, sig: int) -> bool:
        """Signal the job's group; False while it cannot be found (not formed yet, or gone)."""
        pgid = sv.read_pgid(self.folder)
        if pgid is None or pgid == os.getpgid(0):
            return False
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:  # a pid reused by someone else's process: nothing of ours is there
            return True
        return True

    async def _signal(self, sig: int) -> None:
        """Deliver ``sig`` to the job's group, waiting the few microseconds it may take the supervisor
        to form and record it; give up when the supervisor exits (the job is over)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_s
        while not self._signal_group(sig):
            if self.exited.done():
                return
            if loop.time() > deadline:  # the supervisor is stuck before starting the job: end it
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                return
            await asyncio.sleep(_GROUP_POLL_S)

    async def _terminate(self) -> None:
        await self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), self.grace_s)
        except TimeoutError:
            await self._signal(signal.SIGKILL)
        else:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), self.grace_s)
        except TimeoutError:
            # The job's group is killed and the supervisor still has not recorded it: it is stopped
            # (SIGSTOP, which the job itself can send it) or stuck. Waiting on would keep the job
            # RUNNING for ever, past its time limit and its cancel, holding its cores: it ends without
            # its record, as what the kill was for (the reason was written before the first signal).
            log.warning(
                "the job's supervisor did not end after its job was killed; killing it",
                extra={"job_id": self.job_id, "pid": self.pid},
            )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    @property
    def lost(self) -> bool:
        """The scheduler ended this run (its node was declared lost): nothing is to be reported."""
        return sv.LOST in self.reasons

    def kill(
        self,
        *,
        cancelled: bool = False,
        timed_out: bool = False,
        out_of_memory: bool = False,
        lost: bool = False,
        fenced: bool = False,
        stopped: bool = False,
        replaced: bool = False,
    ) -> None:
        asked = {
            "cancelled": cancelled,
            "timeout": timed_out,
            "oom": out_of_memory,
            sv.LOST: lost,
            sv.FENCED: fenced,
            sv.STOPPED: stopped,
            sv.REPLACED: replaced,
        }
        reasons = self.reasons | {reason for reason, yes in asked.items() if yes}
        if reasons != self.reasons:
            self.reasons = frozenset(reasons)
            # Before the signal: an executor restarted mid-kill still reports why the job ended. Only
            # a restart needs it: the kill does not wait on a disk that refuses it.
            with contextlib.suppress(OSError):
                sv.write_kill(self.folder, self.reasons)
        if self._killer is None:
            self._killer = asyncio.create_task(self._terminate())

    async def wait(self, deadline: float | None) -> Outcome:
        """Until the job ends; past ``deadline`` (wall clock) it is killed and marked timed out."""
        timeout = None if deadline is None else max(0.0, deadline - time.time())
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
        except TimeoutError:
            self.kill(timed_out=True)
            await asyncio.shield(self.exited)
        if self._killer is not None:
            await self._killer
        if self.requeue:
            # Its supervisor fences it itself when no heartbeat got through for long (supervisor.c),
            # adding the reason to the record: a job killed so is a lost run (requeued), not the
            # FAILED 137 its exit alone says.
            self.reasons |= sv.read_kill(self.folder)
        record = sv.read_exit(self.folder)
        if record is None:
            # The supervisor is gone without recording the job's end (killed, maybe before it recorded
            # the job's group): the job may run on, on cores the scheduler will give to others.
            try:
                await asyncio.to_thread(kill_job_leftovers, self.folder, self.start)
            except Exception:  # its outcome is reported all the same
                log.exception("looking for what is left of a job failed", extra={"job_id": self.job_id})
            return Outcome(None, None, self.reasons)
        if self.reasons or self._killer is not None:
            # Killed by this executor (cancel, time limit, memory, NodeLost, fence, a stop with
            # ``stop_jobs_on_exit``): the supervisor killed the job's group, not a child that left it
            # (``setsid``, or job control with a clean environment), which would run on after the
            # job's outcome, on cores given to others (after a NodeLost, beside its next run).
            try:
                await asyncio.to_thread(kill_marked_job, self.folder, self.start)
            except Exception:  # its outcome is reported all the same
                log.exception("looking for what is left of a job failed", extra={"job_id": self.job_id})
        return Outcome(record.code, record.ended_at, self.reasons)

    def release(self) -> None:
        """Stop watching (the executor stops and leaves the job running)."""
        self.exited.cancel()


def watch_pidfd(fd: int) -> asyncio.Future[object]:
    """A future done when the process of ``fd`` (a pidfd, which this takes over) exits: the way to
    wait for a process that is not this one's child."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[object] = loop.create_future()

    def ready() -> None:
        if not exited.done():
            exited.set_result(None)

    def close(_: asyncio.Future[object]) -> None:
        loop.remove_reader(fd)
        os.close(fd)

    loop.add_reader(fd, ready)
    exited.add_done_callback(close)
    return exited


def _own_child(child: subprocess.Popen[bytes]) -> asyncio.Future[object]:
    """A future done when this process's child has exited, which it reaps. Through a pidfd: asyncio's
    own subprocess wait starts a thread per child on this Python (its ThreadedChildWatcher), a
    cost paid on every job."""
    try:
        fd = os.pidfd_open(child.pid)
    except OSError:  # a kernel before 5.3: a thread waits for it
        return asyncio.ensure_future(asyncio.to_thread(child.wait))
    exited = watch_pidfd(fd)
    # Reaped as soon as it ends, also when nobody waits any more (the executor stops watching).
    exited.add_done_callback(lambda _: child.poll())
    return exited


@functools.cache
def setsid_program() -> str:
    found = shutil.which("setsid")
    if found is None:
        raise FileNotFoundError("the setsid program (util-linux) is needed to run jobs and was not found")
    return found


def supervisor_argv(script: Path, compiled: Path | None) -> tuple[list[str], str]:
    """The command line of a job's supervisor and the program it runs: the compiled one
    (``compiled.py``), or the shell form when there is none. Both have ``ARGV0`` and the script in
    their command line, which is how a restarted executor recognises them (``leftovers``)."""
    if compiled is not None:
        return [sv.ARGV0, str(script)], str(compiled)
    return ["/bin/sh", "-c", sv.WRAPPER, sv.ARGV0, str(script), setsid_program()], "/bin/sh"


def start_supervisor(
    script: Path,
    cwd: str,
    env: dict[str, str],
    stdout_fd: int,
    stderr_fd: int,
    cpus: set[int],
    compiled: Path | None = None,
    pins: bool = False,
) -> tuple[subprocess.Popen[bytes], float]:
    """Start a job's supervisor with the output descriptors the executor opened and checked for it
    (``output.open_outputs``); the caller keeps and closes them. The supervisor has a session of its
    own, stdin from /dev/null and only files for output: nothing ties it to the executor. Blocking
    and thread-safe: the executor calls it from a worker thread. Returns the child and when it started
    (wall clock). ``pins``: the compiled supervisor moves itself to ``cpus`` (``compiled.pins``)."""
    argv, program = supervisor_argv(script, compiled)
    # The child inherits the CPU mask of the thread that starts it. Setting it here, around the start,
    # pins the job from its first instruction; a preexec function would do the same but forces a full
    # fork() of this process, where without one CPython starts the job with the cheaper vfork(). In a
    # worker thread, the thread that moves to the job's CPUs is not the event loop's, and the move
    # does not hold the GIL (``affinity``). A compiled supervisor that can moves itself instead, told
    # by its environment: two moves of this thread fewer per job (0.15-0.2 ms of this process's CPU
    # here).
    moving = bool(cpus) and not (compiled is not None and pins)
    if cpus and not moving:
        env = env | {sv.CPUS: ",".join(str(cpu) for cpu in sorted(cpus))}
    previous = os.sched_getaffinity(0) if moving else set()
    if moving:
        with contextlib.suppress(OSError):
            move_thread(cpus)
    try:
        process = subprocess.Popen(
            argv,
            executable=program,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout_fd,
            stderr=stderr_fd,
            start_new_session=True,
        )
    finally:
        if moving:
            move_thread(previous)
    return process, time.time()


def supervised(
    job_id: int, folder: Path, child: subprocess.Popen[bytes], start: float, grace_s: float, memory_limit_mb: int
) -> JobProcess:
    """The job of a supervisor this executor started, watched from the running event loop."""
    return JobProcess(job_id, child.pid, folder, start, grace_s, memory_limit_mb, _own_child(child))
