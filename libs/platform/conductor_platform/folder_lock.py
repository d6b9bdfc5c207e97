"""A lock on a folder for as long as a process lives (``flock``: the kernel drops it when the process
ends, however it ends), naming its holder's pid."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def lock_folder(folder: Path, name: str) -> int | None:
    """The open file ``folder/name`` holding an exclusive lock, or None when another process holds it.
    Close-on-exec: children (servers, jobs) do not hold it on."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def holder(folder: Path, name: str) -> str:
    """The pid the lock's holder wrote, or "?"."""
    try:
        return (folder / name).read_text(errors="replace").strip() or "?"
    except OSError:
        return "?"
