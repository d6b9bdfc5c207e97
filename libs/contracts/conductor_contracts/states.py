"""Job states, Slurm's names, and the transitions the log may take them through.

    PENDING ──JobPlaced──► RUNNING ──JobCompleted──► COMPLETED
       │                      ├──JobFailed─────► FAILED / NODE_FAIL
       │                      ├──JobTimedOut───► TIMEOUT
       │                      ├──JobOutOfMemory► OUT_OF_MEMORY
       │                      └──JobCancelled──► CANCELLED
       └──JobCancelled (by the scheduler, never reached a node)──► CANCELLED

A placed job counts as RUNNING from its placement (Slurm does the same: resources are held from then);
JobStarted only adds the pid and start time (a run shorter than the executor's start report delay
has none: its outcome carries them). Terminal states never change again: a later event for a
finished job (a cancel that crossed a completion, a redelivered outcome) is ignored.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"

    @property
    def is_terminal(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


class PendingReason(StrEnum):
    NONE = "None"
    RESOURCES = "Resources"
    PRIORITY = "Priority"
    DEPENDENCY = "Dependency"
    DEPENDENCY_NEVER_SATISFIED = "DependencyNeverSatisfied"
    PARTITION_DOWN = "PartitionDown"
    RESOURCES_NEVER_SATISFIABLE = "ResourcesNeverSatisfiable"
    # Back in the queue after its node was lost (Slurm shows BeginTime / "Requeued" in its history).
    REQUEUED = "Requeued"
