"""A debugging aid for the scheduler's memory, off unless ``CONDUCTOR_TRACEMALLOC_DIR`` names a folder.

When on, tracemalloc records every allocation's traceback from the start (which slows the process
several times, more with ``CONDUCTOR_TRACEMALLOC_FRAMES`` frames per traceback than the default 1:
never in production), and each SIGUSR1 writes a snapshot there
(``scheduler-<n>.tracemalloc``, loadable with ``tracemalloc.Snapshot.load``), so that a bench can
take one at moments it chooses and compare them (``bench/scale.py --tracemalloc``). When off, it
costs nothing: no tracing, no handler.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import tracemalloc
from pathlib import Path

log = logging.getLogger("conductor.scheduler")

ENV = "CONDUCTOR_TRACEMALLOC_DIR"
# Frames kept per allocation: each one more costs time on every allocation.
FRAMES_ENV = "CONDUCTOR_TRACEMALLOC_FRAMES"


def folder() -> Path | None:
    where = os.environ.get(ENV, "")
    return Path(where) if where else None


def start() -> None:
    """Trace allocations from now on, if asked to (before the service allocates its state)."""
    if folder() is not None:
        tracemalloc.start(int(os.environ.get(FRAMES_ENV, "1")))


def dump(where: Path, number: int) -> Path:
    gc.collect()  # what is garbage is not what the state keeps
    path = where / f"scheduler-{number}.tracemalloc"
    part = path.with_suffix(".part")
    tracemalloc.take_snapshot().dump(str(part))
    part.rename(path)  # a reader that sees the name reads it whole
    return path


def on_signal(loop: asyncio.AbstractEventLoop) -> None:
    """SIGUSR1 writes a snapshot, between two steps of the loop (the state is never half folded)."""
    where = folder()
    if where is None or not tracemalloc.is_tracing():
        return
    where.mkdir(parents=True, exist_ok=True)
    taken = [0]

    def take() -> None:
        taken[0] += 1
        path = dump(where, taken[0])
        log.warning("tracemalloc snapshot written", extra={"path": str(path)})

    loop.add_signal_handler(signal.SIGUSR1, take)
