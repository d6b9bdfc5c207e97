"""A node's heartbeat: the value its executor rewrites under the node's key in the heartbeats bucket
(``subjects.HEARTBEATS_BUCKET``, ``subjects.heartbeat_key``). Not an event (never in the log): the
scheduler reads it for liveness, and the node's other executors to find a twin (one executor per
node). Both read it through ``decode``, which takes whatever a key may hold (an older executor's
value, a hand-written one) without failing."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from conductor_contracts import events as ev


@dataclass(frozen=True)
class Beat:
    instance: str | None  # the executor instance that wrote it; None: an older executor, or none named
    lost_after_s: float | None  # the writer's own silence before it fences; None: not said
    where: str  # "pid P on HOST", for messages


def encode(
    registration: ev.NodeRegistered, now: float, *, instance: str, lost_after_s: float, pid: int, host: str
) -> bytes:
    """When it was written, what the node registered (small: a KV value), and who wrote it."""
    return json.dumps(
        {
            "node": registration.node,
            "at": now,
            "cpus": registration.cpus,
            "memory_mb": registration.memory_mb,
            "partitions": list(registration.partitions),
            "pid": pid,
            "host": host,
            "instance": instance,
            "lost_after_s": lost_after_s,
        }
    ).encode()


def decode(value: bytes | None) -> Beat:
    try:
        data = json.loads(value or b"")
        instance, own = data.get("instance"), data.get("lost_after_s")
        where = f"pid {data.get('pid')} on {data.get('host', '?')}"
    except (ValueError, AttributeError):
        return Beat(None, None, "?")
    usable = isinstance(own, int | float) and not isinstance(own, bool) and own > 0 and math.isfinite(own)
    return Beat(instance if isinstance(instance, str) and instance else None, float(own) if usable else None, where)
