"""Helpers to build logs for the scheduler's pure core."""

from __future__ import annotations

from typing import Any

from conductor_contracts import events as ev
from conductor_scheduler.policy import Decision, decide
from conductor_scheduler.state import ClusterState, evolve


def submitted(cpus: int = 1, memory_mb: int = 100, partition: str = "default", **extra: Any) -> ev.JobSubmitted:
    """A small job; ``extra`` sets other fields (dependency, workflow_index, noop, name...)."""
    return ev.JobSubmitted(
        name=extra.pop("name", "j"),
        account=extra.pop("account", "u"),
        partition=partition,
        ntasks_per_node=1,
        cpus_per_task=cpus,
        cpus=cpus,
        memory_mb=memory_mb,
        time_limit_s=60,
        working_directory="/tmp",
        standard_output="",
        standard_error=None,
        script="true",
        **extra,
    )


def node(name: str, cpus: int, memory_mb: int = 1000, partitions: tuple[str, ...] = ("default",)) -> ev.NodeRegistered:
    return ev.NodeRegistered(node=name, cpus=cpus, memory_mb=memory_mb, partitions=partitions)


class Log:
    """An in-memory log with the scheduler loop around it: decisions are appended, then folded."""

    def __init__(self) -> None:
        self.events: list[tuple[int, ev.Event, bool]] = []
        self.state = ClusterState()

    def append(self, event: ev.Event, *, by_scheduler: bool = False) -> int:
        seq = len(self.events) + 1
        self.events.append((seq, event, by_scheduler))
        evolve(self.state, seq, event, by_scheduler=by_scheduler)
        return seq

    def schedule(self, queue_depth: int | None = None) -> list[Decision]:
        """One decision cycle (at the policy's own queue_depth unless given), its decisions folded."""
        decisions = decide(self.state) if queue_depth is None else decide(self.state, queue_depth=queue_depth)
        for decision in decisions:
            self.append(decision, by_scheduler=True)
        return list(decisions)

    def placements(self) -> list[tuple[int, str, tuple[int, ...]]]:
        return [(e.job_id, e.node, e.cores) for _, e, _ in self.events if isinstance(e, ev.JobPlaced)]


def replay(events: list[tuple[int, ev.Event, bool]]) -> ClusterState:
    state = ClusterState()
    for seq, event, by_scheduler in events:
        evolve(state, seq, event, by_scheduler=by_scheduler)
    return state
