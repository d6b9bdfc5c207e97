"""A file the executor touches at every heartbeat, so that its jobs can tell it is gone.

A live executor that cannot heartbeat kills its requeue jobs itself (``liveness.py``): the scheduler
may have run them elsewhere. One that died (SIGKILL, a crash loop, a broken install) cannot, and a
requeue job ran on under its supervisor while the scheduler, 30 s later, ran it again elsewhere: twice
at once. So a requeue job's supervisor is given this file and a silence (``fence_after_s``, shorter
than ``node_lost_after_s`` by two beats, so the job is gone before the scheduler can place it again)
and kills the job once the file has not changed for that long (``supervisor.c``; the shell form
does not, see docs/decisions.md). Touched at each heartbeat that gets through, what the scheduler
goes by: an executor alive but stuck before it beats (a restart on a full disk) or cut off from
NATS is, to the scheduler, as gone as a dead one.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("conductor.executor")

LEASE_ENV = "CONDUCTOR_FENCE_LEASE"
AFTER_ENV = "CONDUCTOR_FENCE_AFTER_S"
NAME = "alive"


def fence_after_s(node_lost_after_s: float, heartbeat_s: float) -> int:
    """Whole seconds of silence before a supervisor fences: two beats short of the node being declared
    lost, and never so short that the silence between two beats that get through passes for one (the
    supervisor looks once a second). With node_lost_after_s under four beats the second wins: the
    node may then be declared lost a little before its requeue jobs are fenced, as without a fence.
    A first version, at 3 s with beats every 2 s, fenced requeue jobs between every two beats."""
    return max(1, math.floor(node_lost_after_s - 2 * heartbeat_s), math.ceil(2 * heartbeat_s + 1))


def touch(path: Path) -> None:
    """Raises OSError when the file can be neither touched nor made."""
    try:
        os.utime(path)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def touched(path: Path) -> Callable[[], None]:
    """What a heartbeat that got through does: the lease says the node was heard from now. A failure
    is logged once per outage (the requeue jobs' supervisors will fence them if it lasts)."""
    failing = False

    def touch_it() -> None:
        nonlocal failing
        try:
            touch(path)
        except OSError as err:
            if not failing:
                log.error("cannot touch the lease requeue jobs watch", extra={"path": str(path), "error": str(err)})
            failing = True
        else:
            failing = False

    return touch_it
