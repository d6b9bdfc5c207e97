"""The compiled supervisor (``supervisor.c``): one small program started per job where the shell form
(``supervision.WRAPPER``) starts three, ``sh``, ``setsid`` and ``bash`` (about 1.5 ms less CPU per job
here, ``bench/supervisor_cost.py``).

``CONDUCTOR_JOB_SUPERVISOR``:
- ``auto`` (the default): built once per machine with the C compiler at hand (``cc``; ``CC`` names
  another), kept in the user's cache folder (or the executor's state folder) under a name that
  changes with its source, and used when it passes its check; without a compiler, or when the build
  or the check fails, the shell form, said once in the log. An executor never depends on a compiler.
- ``shell``: always the shell form.
- the absolute path of a supervisor built beforehand (an image without a compiler: the Dockerfile
  builds it in its first stage); it must pass the check, or the executor refuses to start.

The check runs the binary on a script in a folder of its own, as the executor would: its job must
lead a session of its own and its ``status`` record must name the job's group and exit status.

Every job runs through this binary: one that someone else could have written, or could replace
later, is never used. The folder it is built in, and every folder above it, must be this user's or
root's and writable by nobody else (above it, unless sticky, like /tmp); the binary too. Writable by
its group is writable by nobody else when the group is this user's alone (``_only_mine``).
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import logging
import os
import platform
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from conductor_executor import supervision as sv

log = logging.getLogger("conductor.executor")

SOURCE = Path(__file__).with_name("supervisor.c")
AUTO = "auto"
SHELL = "shell"
# Exits 3 when it leads a session of its own (the sixth field of /proc/self/stat), 4 when not.
_CHECK_SCRIPT = 'read -r -a f < /proc/$$/stat\n[ "${f[5]}" = "$$" ] && exit 3\nexit 4\n'
_CHECK_TIMEOUT_S = 10.0
_BUILD_TIMEOUT_S = 120.0
_POLL_S = 0.05


class Cancelled(Exception):
    """The executor stops: building or checking is given up."""


def _run(
    argv: list[str],
    executable: str | None,
    timeout_s: float,
    cancel: threading.Event | None,
    env: dict[str, str] | None = None,
) -> int:
    """Run a program in a session of its own and return its exit code; its whole group is killed when
    it ends, times out or ``cancel`` is set, so nothing it started outlives the look (a compiler's
    children, a broken supervisor's). OSError: it cannot start; TimeoutError; Cancelled."""
    process = subprocess.Popen(
        argv,
        executable=executable,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                return process.wait(_POLL_S)
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    raise Cancelled from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{argv[0]} still ran after {timeout_s:.0f} s") from None
    finally:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        process.kill()
        process.wait()


def check(binary: Path, cancel: threading.Event | None = None) -> str | None:
    """None when ``binary`` supervises a job as the executor needs, else what is wrong."""
    with tempfile.TemporaryDirectory(prefix="conductor-supervisor-check.") as folder:
        script = Path(folder) / "script.sh"
        script.write_text(_CHECK_SCRIPT)
        try:
            code = _run([sv.ARGV0, str(script)], str(binary), _CHECK_TIMEOUT_S, cancel)
        except (OSError, TimeoutError) as err:
            return f"it does not run: {err}"
        pgid, ended = sv.read_pgid(Path(folder)), sv.read_exit(Path(folder))
        if code != 0 or pgid is None or ended is None or ended.code != 3:
            recorded = "no exit" if ended is None else f"exit {ended.code}"
            return f"it exited {code}, recorded group {pgid} and {recorded} (wanted a group and exit 3)"
    return None


def pins(binary: Path, cancel: threading.Event | None = None) -> bool:
    """Whether ``binary`` moves itself and its job to the CPUs ``supervision.CPUS`` lists, and keeps the
    variable from the job. One built before it did (an image's, named by path) does not: the executor
    then moves the thread that starts it, as for the shell form. Checked once, at the executor's start:
    a binary swapped for an older one while it runs starts its jobs unpinned (its owner's doing; a
    job of the same user can leave its CPUs with ``taskset`` anyway, there being no cpuset). Cancelled
    when ``cancel`` is set."""
    cpu = max(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="conductor-supervisor-check.") as folder:
        script, seen = Path(folder) / "script.sh", Path(folder) / "seen"
        out = shlex.quote(str(seen))  # TMPDIR is the machine's: spaces, quotes
        script.write_text(f'grep Cpus_allowed_list /proc/self/status > {out}\necho "${{{sv.CPUS}-}}" >> {out}\n')
        env = {"PATH": os.defpath, sv.CPUS: str(cpu)}
        try:
            _run([sv.ARGV0, str(script)], str(binary), _CHECK_TIMEOUT_S, cancel, env)
            lines = seen.read_text().splitlines()
        except (OSError, TimeoutError):  # not Cancelled: the executor stops
            return False
    return len(lines) == 2 and lines[0].split() == ["Cpus_allowed_list:", str(cpu)] and lines[1] == ""


def cache_folder() -> Path | None:
    """The user's cache folder for this, None when there is none to use (XDG: a relative
    XDG_CACHE_HOME is ignored)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no home folder known
            return None
    return Path(base) / "scns-conductor"


def compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (found := shutil.which(name)):
            return found
    return None


def _only_mine(gid: int, users: Callable[[], list[pwd.struct_passwd]] = pwd.getpwall) -> bool:
    """Whether group ``gid`` has one member, this user: a user private group, what umask 002 is for
    (Debian and Ubuntu give it to every user). Debian's OpenSSH accepts group-writable files by the
    same rule (its ``user-group-modes`` patch): the members by primary group and by the group's list
    together are exactly this user. A group without members (setgid programs' kind) is not."""
    try:
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    me = os.geteuid()
    members = 0
    for user in users():
        if user.pw_gid == gid:
            if user.pw_uid != me:
                return False
            members += 1
    if group.gr_mem:
        try:
            name = pwd.getpwuid(me).pw_name
        except KeyError:
            return False
        if group.gr_mem != [name]:
            return False
        members += 1
    return members > 0


def _nobody_else_writes(path: Path, sticky_ok: bool) -> bool:
    info = path.lstat()
    if info.st_uid not in (0, os.geteuid()):
        return False
    if sticky_ok and info.st_mode & stat.S_ISVTX:
        return True
    if info.st_mode & 0o002:
        return False
    return not info.st_mode & 0o020 or _only_mine(info.st_gid)


def _private(folder: Path, sticky_ok: bool = False) -> bool:
    """``folder`` and every folder above it are this user's or root's, and nobody else can write
    them (above it, and ``folder`` itself with ``sticky_ok``: or sticky, where nobody can rename
    what is ours)."""
    try:
        if not _nobody_else_writes(folder, sticky_ok):
            return False
        return all(_nobody_else_writes(parent, sticky_ok=True) for parent in folder.parents)
    except OSError:
        return False


def _refuse_unless_private(folder: Path, sticky_ok: bool = False) -> None:
    if not _private(folder, sticky_ok):
        raise PermissionError(
            f"{folder}, or a folder above it, is another user's or can be written by others (its group"
            " too, unless that group is this user's alone: name a supervisor built beforehand in"
            " CONDUCTOR_JOB_SUPERVISOR)"
        )


# A build's temporary file, left by an executor killed amid it, is removed by a later build.
_STALE_S = 3600.0


def _sweep_stale(folder: Path) -> None:
    for stale in folder.glob(".conductor-job.*"):
        with contextlib.suppress(OSError):
            if time.time() - stale.lstat().st_mtime > _STALE_S:
                stale.unlink()


def _trusted(path: Path) -> bool:
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def build(folder: Path, cancel: threading.Event | None = None) -> Path | None:
    """The supervisor built from ``SOURCE`` in ``folder`` (reused when it is there and passes its
    check), or None when there is no compiler or nothing it builds passes. OSError: ``folder`` is
    unusable or not private to this user; Cancelled."""
    # ~/.cache may not be there yet; the home folder must (none is made up). Nothing is made where
    # it could not be used: in a folder that is not private to this user.
    for made in (folder.parent, folder):
        if not made.exists():
            _refuse_unless_private(made.parent.resolve(), sticky_ok=True)
            made.mkdir(mode=0o700, exist_ok=True)
    # Absolute (jobs start in folders of their own: a relative path would miss it) and without links,
    # so that the folders above are the ones looked at.
    folder = folder.resolve()
    _refuse_unless_private(folder)
    _sweep_stale(folder)
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + platform.machine().encode()).hexdigest()[:16]
    target = folder / f"conductor-job-{digest}"
    if _trusted(target) and check(target, cancel) is None:
        return target
    cc = compiler()
    if cc is None:
        return None
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".conductor-job.")
    os.close(fd)
    try:
        # Static first: no dynamic loader at each start. Not every libc has a static form; linked
        # dynamically, every symbol is bound at the start (-z now), not by the vfork child that
        # borrows the supervisor's memory until its exec (supervisor.c).
        for flags in (["-O2", "-static"], ["-O2", "-Wl,-z,now"]):
            try:
                built = _run([cc, *flags, "-o", tmp, str(SOURCE)], None, _BUILD_TIMEOUT_S, cancel)
            except (OSError, TimeoutError) as err:
                log.warning("building the job supervisor failed", extra={"compiler": cc, "error": str(err)})
                return None
            if built != 0:
                continue
            os.chmod(tmp, 0o755)
            if check(Path(tmp), cancel) is None:
                # Concurrent builds each rename a whole binary into place: any of them will do.
                os.replace(tmp, target)
                return target
        log.warning("the job supervisor did not build or failed its check", extra={"compiler": cc})
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def resolve(setting: str, state_dir: Path, cancel: threading.Event | None = None) -> Path | None:
    """The compiled supervisor to start jobs with (an absolute path), None for the shell form.
    Cancelled: the executor stops."""
    if setting == SHELL:
        return None
    if setting != AUTO:
        return Path(setting)  # absolute, and checked with the settings
    cache = cache_folder()
    built = None
    for folder in [f for f in (cache, state_dir / "bin") if f is not None]:
        try:
            if folder == state_dir / "bin":
                state_dir.mkdir(parents=True, exist_ok=True)
            built = build(folder, cancel)
        except OSError as err:
            log.warning("cannot build the job supervisor here", extra={"folder": str(folder), "error": str(err)})
            continue
        break
    if built is None:
        log.warning("no C compiler or no working build: jobs start through the shell supervisor (slower)")
    else:
        log.info("jobs start through the compiled supervisor", extra={"path": str(built)})
    return built
