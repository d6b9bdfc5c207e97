"""What an earlier executor left running that cannot be taken over: found by its pid record or,
without one, by its command line, and killed only if it is still that job (pids and paths are reused)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from pathlib import Path

import psutil

from conductor_executor.supervision import ARGV0

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
    """The script of a job's supervisor: ``/bin/sh -c <wrapper> conductor-job <script> <setsid>``."""
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
