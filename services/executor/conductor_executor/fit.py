"""Does a placement fit what this node has now? The scheduler decides from its fold of the log, which
can be behind the node (it re-registered smaller): the executor checks before it starts anything."""

from __future__ import annotations

from collections.abc import Iterable

from conductor_contracts import events as ev


def misfit(placement: ev.JobPlaced, cpus: int, memory_mb: int, running: Iterable[ev.JobPlaced]) -> str | None:
    """Why ``placement`` does not fit a node of ``cpus`` and ``memory_mb`` running ``running``, or None."""
    running = list(running)
    outside = sorted(c for c in placement.cores if not 0 <= c < cpus)
    if outside:
        return f"cores {outside} are outside this node's 0..{cpus - 1}"
    busy = {c: other.job_id for other in running for c in other.cores}
    taken = sorted(c for c in placement.cores if c in busy)
    if taken:
        holders = sorted({busy[c] for c in taken})
        return f"cores {taken} are in use by job(s) {', '.join(map(str, holders))}"
    if len(set(placement.cores)) != len(placement.cores):
        return f"cores {list(placement.cores)} repeat a core"
    free = memory_mb - sum(other.memory_mb for other in running)
    if placement.memory_mb > free:
        return f"{placement.memory_mb}M of memory asked, {max(free, 0)}M of {memory_mb}M left"
    return None
