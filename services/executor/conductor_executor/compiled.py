"""The compiled supervisor (``supervisor.c``): one small program started per job where the shell form
(``supervision.WRAPPER``) starts three, ``sh``, ``setsid`` and ``bash`` (about 1.5 ms less CPU per job
here, ``bench/supervisor_cost.py``).

``CONDUCTOR_JOB_SUPERVISOR``:
- ``auto`` (the default): built once per machine with the C compiler at hand (``cc``; ``CC`` names
  another), kept in the user's cache folder under a name that changes with its source, and used when
  it passes its check; without a compiler, or when the build or the check fails, the shell form, said
  once in the log. An executor never depends on a compiler being there.
- ``shell``: always the shell form.
- the absolute path of a supervisor built beforehand (an image without a compiler: the Dockerfile
  builds it in its first stage); it must pass the check, or the executor refuses to start.

The check runs the binary on a script in a folder of its own, as the executor would: its job must
lead a session of its own and its ``status`` record must name the job's group and exit status.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
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


def check(binary: Path) -> str | None:
    """None when ``binary`` supervises a job as the executor needs, else what is wrong."""
    with tempfile.TemporaryDirectory(prefix="conductor-supervisor-check.") as folder:
        script = Path(folder) / "script.sh"
        script.write_text(_CHECK_SCRIPT)
        try:
            done = subprocess.run(
                [sv.ARGV0, str(script)],
                executable=binary,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                start_new_session=True,
                timeout=_CHECK_TIMEOUT_S,
            )
        except (OSError, subprocess.SubprocessError) as err:
            return f"it does not run: {err}"
        status = (Path(folder) / sv.STATUS).read_text() if (Path(folder) / sv.STATUS).is_file() else ""
        pgid, code = sv.parse_status(status)
        if done.returncode != 0 or pgid is None or code != 3:
            output = (done.stdout + done.stderr).decode(errors="replace").strip()[:200]
            return f"exit {done.returncode}, status record {status!r}, output {output!r}"
    return None


def cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scns-conductor"


def compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (found := shutil.which(name)):
            return found
    return None


def _trusted(path: Path) -> bool:
    """A binary every job runs through: only one of this user's that nobody else can write."""
    try:
        info = path.stat(follow_symlinks=False)
    except OSError:
        return False
    return path.is_file() and not path.is_symlink() and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def build(folder: Path) -> Path | None:
    """The supervisor built from ``SOURCE`` in ``folder`` (reused when it is there and passes its
    check), or None when there is no compiler or nothing it builds passes. OSError: ``folder`` is
    unusable."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + platform.machine().encode()).hexdigest()[:16]
    target = folder / f"conductor-job-{digest}"
    if _trusted(target) and check(target) is None:
        return target
    cc = compiler()
    if cc is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".conductor-job.")
    os.close(fd)
    try:
        # Static first: no dynamic loader at each start. Not every libc has a static form.
        for flags in (["-O2", "-static"], ["-O2"]):
            try:
                built = subprocess.run(
                    [cc, *flags, "-o", tmp, str(SOURCE)],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=_BUILD_TIMEOUT_S,
                )
            except (OSError, subprocess.SubprocessError) as err:
                log.warning("building the job supervisor failed", extra={"compiler": cc, "error": str(err)})
                return None
            if built.returncode != 0:
                continue
            os.chmod(tmp, 0o755)
            if check(Path(tmp)) is None:
                # Concurrent builds each rename a whole binary into place: any of them will do.
                os.replace(tmp, target)
                return target
        log.warning(
            "the job supervisor did not build or failed its check",
            extra={"compiler": cc, "output": built.stderr.decode(errors="replace")[-500:]},
        )
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def resolve(setting: str, state_dir: Path) -> Path | None:
    """The compiled supervisor to start jobs with, None for the shell form."""
    if setting == SHELL:
        return None
    if setting != AUTO:
        return Path(setting)  # checked with the settings
    folders = [state_dir / "bin"]
    with contextlib.suppress(RuntimeError):  # no home folder to find
        folders.insert(0, cache_folder())
    for folder in folders:
        try:
            built = build(folder)
        except OSError as err:
            log.warning("cannot build the job supervisor here", extra={"folder": str(folder), "error": str(err)})
            continue
        if built is not None:
            log.info("jobs start through the compiled supervisor", extra={"path": str(built)})
        break
    else:
        built = None
    if built is None:
        log.warning("no C compiler or no working build: jobs start through the shell supervisor (slower)")
    return built
