"""A file the executor touches at every heartbeat, so that its jobs can tell it is gone.

A live executor that cannot heartbeat kills its requeue jobs itself (``liveness.py``): the scheduler
may have run them elsewhere. One that died (SIGKILL, a crash loop, a broken install) cannot, and a
requeue job ran on under its supervisor while the scheduler, 30 s later, ran it again elsewhere: twice
at once. So a requeue job's supervisor is given this file and a silence (``fence_after_s``, shorter
than ``node_lost_after_s`` by two beats, so the job is gone before the scheduler can place it again)
and kills the job once the file has not changed for that long (``supervisor.c``; the shell form
does not, see docs/decisions.md). Touched whether NATS answers or not: it says the process lives,
not that the node is reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger("conductor.executor")

LEASE_ENV = "CONDUCTOR_FENCE_LEASE"
AFTER_ENV = "CONDUCTOR_FENCE_AFTER_S"
NAME = "alive"


def fence_after_s(node_lost_after_s: float, heartbeat_s: float) -> int:
    return max(1, int(node_lost_after_s - 2 * heartbeat_s))


def touch(path: Path) -> None:
    """Raises OSError when the file can be neither touched nor made."""
    try:
        os.utime(path)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


async def keep_touched(path: Path, every_s: float, stop: asyncio.Event) -> None:
    failing = False
    while not stop.is_set():
        try:
            touch(path)
        except OSError as err:
            if not failing:  # once per outage: the supervisors of requeue jobs will fence them
                log.error("cannot touch the lease requeue jobs watch", extra={"path": str(path), "error": str(err)})
            failing = True
        else:
            failing = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
