"""Where a job's output goes: Slurm's filename patterns, expanded the same way by every service,
and the limits a path must keep so that the OS can open it wherever it is expanded."""

from __future__ import annotations

import posixpath

from conductor_contracts.events import JobSubmitted

DEFAULT_OUTPUT = "slurm-%j.out"

# Linux: PATH_MAX (4096) counts the terminating NUL; NAME_MAX is per component. Both in bytes.
PATH_MAX_BYTES = 4095
NAME_MAX_BYTES = 255
# Job ids are stream sequences (uint64 in NATS, BIGINT in the read models); the longest ``%j``.
LARGEST_JOB_ID = 2**63 - 1


def expand_pattern(pattern: str, *, job_id: int, name: str, account: str) -> str:
    """Slurm's ``%j`` (job id), ``%x`` (job name), ``%u`` (user/account), ``%%`` (a literal %)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "%" and i + 1 < len(pattern):
            code = pattern[i + 1]
            replacement = {"j": str(job_id), "x": name, "u": account, "%": "%"}.get(code)
            if replacement is not None:
                out.append(replacement)
                i += 2
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def output_path(pattern: str | None, *, job_id: int, name: str, account: str, cwd: str) -> str:
    """The absolute path of an output file; relative patterns are taken from the working directory."""
    expanded = expand_pattern(pattern or DEFAULT_OUTPUT, job_id=job_id, name=name, account=account)
    return posixpath.normpath(posixpath.join(cwd, expanded))


def output_files(job_id: int, job: JobSubmitted) -> tuple[str, str | None]:
    """A submitted job's stdout path and, when the user gave one, its stderr path."""
    stdout = output_path(
        job.standard_output, job_id=job_id, name=job.name, account=job.account, cwd=job.working_directory
    )
    if not job.standard_error:
        return stdout, None
    stderr = output_path(
        job.standard_error, job_id=job_id, name=job.name, account=job.account, cwd=job.working_directory
    )
    return stdout, stderr


def path_problem(path: str) -> str | None:
    """Why the OS could not open ``path`` (or why we refuse it), in words for a user; None if it can.

    Control characters are legal in Linux file names but no one needs them in a job's paths, and a
    newline in a path breaks every log line and terminal that shows it.
    """
    if "\x00" in path:
        return "contains a NUL character"
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        return "contains a control character"
    try:
        data = path.encode()
    except UnicodeEncodeError:
        return "is not valid Unicode (it holds a lone surrogate)"
    if len(data) > PATH_MAX_BYTES:
        return f"is {len(data)} bytes long; a path may have at most {PATH_MAX_BYTES}"
    longest = max(len(part) for part in data.split(b"/"))
    if longest > NAME_MAX_BYTES:
        return f"has a component of {longest} bytes; each may have at most {NAME_MAX_BYTES}"
    return None


# Files of the system itself: opened by the executor they resolve in its own context (/dev/stderr
# and /proc/self/fd/2 are its log, /proc/self/environ its secrets). /dev/null is what Slurm users
# write to throw output away. The executor refuses the same (conductor_executor.output).
_SYSTEM_TREES = ("/proc", "/sys", "/dev")
_ALLOWED_IN_DEV = ("/dev/null",)


def system_tree(path: str) -> str | None:
    """The system tree (/proc, /sys, /dev) that the absolute ``path`` is in, or None: paths there name
    the kernel's view of whoever opens them, the executor, not the job. The gateway's check of a job's
    paths and the executor's of where an open file leads."""
    # POSIX normalisation keeps a leading "//" (which Linux reads as "/"): //proc is /proc.
    normal = "/" + posixpath.normpath(path).lstrip("/")
    return next((tree for tree in _SYSTEM_TREES if normal == tree or normal.startswith(tree + "/")), None)


def system_path_problem(path: str) -> str | None:
    """Why a job may not use ``path`` (absolute) as its working directory or output: it is one of
    the system's own files, not a job's; None if it may."""
    if "/" + posixpath.normpath(path).lstrip("/") in _ALLOWED_IN_DEV or (tree := system_tree(path)) is None:
        return None
    return f"is under {tree}, the system's own files: a job's files cannot be there"


def output_pattern_problem(pattern: str, *, name: str, account: str, cwd: str) -> str | None:
    """Why an output pattern cannot be opened as a file once expanded, for any job id; None if it can.

    Checked on the expansion (``%x`` may add 200 characters, ``%j`` 19 digits), as the executor
    will open it: a pattern that fits may not once it is expanded.
    """
    if problem := path_problem(pattern):
        return problem
    expanded = expand_pattern(pattern, job_id=LARGEST_JOB_ID, name=name, account=account)
    if posixpath.basename(expanded) in ("", ".", ".."):
        return "must name a file, not a directory"
    path = output_path(pattern, job_id=LARGEST_JOB_ID, name=name, account=account, cwd=cwd)
    if problem := path_problem(path):
        return f"once expanded (%x, %u, and %j as a 19-digit job id) the path {problem}"
    if problem := system_path_problem(path):
        return f"the path {problem}"
    return None
