"""One job's process: spawn it in its own process group, wait with a time limit, kill it on demand.

Every kill goes to the whole group (SIGTERM, a grace period, then SIGKILL), so children a script
started do not outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from conductor_executor.environment import exit_code_of


@dataclass
class Outcome:
    exit_code: int
    timed_out: bool = False
    cancelled: bool = False
    out_of_memory: bool = False


@dataclass
class JobProcess:
    job_id: int
    process: asyncio.subprocess.Process
    grace_s: float
    memory_limit_mb: int
    cancelled: bool = False
    timed_out: bool = False
    out_of_memory: bool = False
    _killer: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    async def _terminate(self) -> None:
        self._signal_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), self.grace_s)
        except TimeoutError:
            self._signal_group(signal.SIGKILL)

    def kill(self, *, cancelled: bool = False, timed_out: bool = False, out_of_memory: bool = False) -> None:
        self.cancelled = self.cancelled or cancelled
        self.timed_out = self.timed_out or timed_out
        self.out_of_memory = self.out_of_memory or out_of_memory
        if self._killer is None:
            self._killer = asyncio.create_task(self._terminate())

    async def wait(self, time_limit_s: int | None) -> Outcome:
        try:
            returncode = await asyncio.wait_for(asyncio.shield(self.process.wait()), time_limit_s)
        except TimeoutError:
            self.kill(timed_out=True)
            returncode = await self.process.wait()
        if self._killer is not None:
            await self._killer
        self._signal_group(signal.SIGKILL)  # leftovers the script put in the background
        return Outcome(
            exit_code_of(returncode),
            timed_out=self.timed_out,
            cancelled=self.cancelled,
            out_of_memory=self.out_of_memory,
        )

    def memory_mb(self) -> float:
        """Resident memory of the job's whole process tree (what Slurm's jobacct_gather samples)."""
        try:
            root = psutil.Process(self.process.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total / (1024 * 1024)


async def spawn(
    job_id: int,
    script: Path,
    cwd: str,
    env: dict[str, str],
    stdout_fd: int,
    stderr_fd: int,
    cpus: set[int],
    grace_s: float,
    memory_limit_mb: int,
) -> JobProcess:
    """Start the job with the output descriptors the executor opened and checked for it
    (``output.open_outputs``); the caller keeps and closes them."""
    # The child inherits the CPU mask of the thread that starts it. Setting it here, around the start,
    # pins the job from its first instruction; a preexec function would do the same but forces a full
    # fork() of this process, where without one CPython starts the job with the cheaper vfork().
    previous = os.sched_getaffinity(0)
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)
    try:
        process = await asyncio.create_subprocess_exec(
            "/bin/bash",
            str(script),
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout_fd,
            stderr=stderr_fd,
            start_new_session=True,
        )
    finally:
        if cpus:
            os.sched_setaffinity(0, previous)
    return JobProcess(job_id, process, grace_s, memory_limit_mb)
