"""A running job's output read on the gateway's own machine (``CONDUCTOR_LOCAL_OUTPUT``), never a
path a user merely named: see docs/decisions.md, "Job output"."""

from __future__ import annotations

import os
import stat

from conductor_contracts.paths import system_path_problem

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def read_live(path: str, max_bytes: int) -> str | None:
    """The end of a running job's output file, or None when it is not something this gateway may read.

    The path is the user's, and the job may change what is there while it runs, so: every component
    opened without following a symbolic link (a job cannot point its output at /proc/self or at a
    secret), without blocking (a FIFO), and only a regular file with no other name (not a hard link
    to someone else's file) is read.
    """
    parts = path.split("/")[1:]
    if not path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    if system_path_problem(path):  # /proc/<gateway pid>/environ is a regular file with one link
        return None
    try:
        fd = os.open("/", _DIRECTORY)
        try:
            for part in parts[:-1]:
                inner = os.open(part, _DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = inner
            file_fd = os.open(parts[-1], _FILE, dir_fd=fd)
        finally:
            os.close(fd)
        with os.fdopen(file_fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                return None
            f.seek(max(0, info.st_size - max_bytes))
            return f.read(max_bytes).decode(errors="replace")
    except OSError:
        return None
