"""The scheduling policy as it was before its first fit resumed where it left off (kept only as the
reference that test_policy_equivalence.py compares the policy with: same decisions, in the same order).

The scheduling policy: FIFO + first fit, per partition. Pure: state in, decisions out.

- Jobs are taken in submit order. A job goes to the first node (by name) of its partition with enough
  free cores and memory, and gets the lowest-numbered free cores.
- A job that does not fit now blocks the jobs behind it in its partition (strict FIFO: no backfill),
  so a big job is not starved by a stream of small ones.
- A job larger than every node of its partition could ever hold does not block anyone: it waits with
  reason ResourcesNeverSatisfiable, and a bigger node registering later can still take it.
- A job held by a dependency is passed over (reason Dependency, set at submit): it blocks nobody. One
  whose dependency can no longer hold is cancelled (DependencyNeverSatisfied); a no-op job whose
  dependency holds is completed without a node.
- Reasons are evaluated for the first ``queue_depth`` pending jobs of each partition (Slurm's
  default_queue_depth) and emitted only when they change, so a deep queue does not flood the log.
"""

from __future__ import annotations

from dataclasses import dataclass

from conductor_contracts import events as ev
from conductor_contracts.states import PendingReason
from conductor_scheduler.policy import (  # not first fit's: taken as they are
    _orphaned,
    held_away,
    released_reasons,
    waits_for,
)
from conductor_scheduler.state import ClusterState, Node, PendingJob

Decision = ev.JobPlaced | ev.JobCancelled | ev.JobCompleted | ev.JobFailed | ev.JobRequeued | ev.JobReasonChanged


@dataclass
class _Room:
    cores: list[int]
    memory_mb: int


def _never_fits(job: PendingJob, nodes: list[Node]) -> str | None:
    if any(job.cpus <= n.cpus and job.memory_mb <= n.memory_mb for n in nodes):
        return None
    biggest = max(nodes, key=lambda n: (n.cpus, n.memory_mb))
    return (
        f"asks {job.cpus} CPUs and {job.memory_mb}M of memory; the largest node of partition "
        f"'{job.partition}' ({biggest.name}) has {biggest.cpus} CPUs and {biggest.memory_mb}M"
    )


def decide(state: ClusterState, *, queue_depth: int = 100) -> list[Decision]:
    decisions: list[Decision] = _orphaned(state)
    for job_id in sorted(state.cancel_requested):
        if job_id in state.pending:
            decisions.append(ev.JobCancelled(job_id=job_id))
    for job_id in sorted(state.doomed):
        if job_id in state.pending and job_id not in state.cancel_requested:
            never = PendingReason.DEPENDENCY_NEVER_SATISFIED.value
            decisions.append(ev.JobCancelled(job_id=job_id, reason=never, detail=state.doomed[job_id]))
    for job_id in sorted(state.ready_noops):
        if job_id in state.pending and job_id not in state.cancel_requested:
            decisions.append(ev.JobCompleted(job_id=job_id))

    nodes = sorted(state.nodes.values(), key=lambda n: n.name)
    room = {n.name: _Room(n.usable_cores(), n.free_memory_mb) for n in nodes if n.available}
    partitions: dict[str, list[Node]] = {}  # the nodes that may take work now
    unavailable: dict[str, list[str]] = {}  # the lost or drained ones, for the reason's detail
    for n in nodes:
        for partition in n.partitions:
            if n.available:
                partitions.setdefault(partition, []).append(n)
            else:
                unavailable.setdefault(partition, []).append(f"{n.name} {n.away_as}")
    away = {p: [n for n in nodes if p in n.partitions and not n.available] for p in unavailable}
    blocked: set[str] = set()  # a job there did not fit: strict FIFO holds the rest back
    held_nodes: set[str] = set()  # the nodes of blocked partitions
    done: set[str] = set()  # blocked or down, and past queue_depth: nothing more to decide there
    evaluated: dict[str, int] = {}

    def reason(job: PendingJob, code: PendingReason, detail: str = "") -> None:
        recorded = state.reasons.get(job.job_id)
        # Waiting one's turn is what a pending job with no reason does: Priority is recorded only to
        # replace another reason. In a busy cluster nearly every job enters the explained window, so
        # recording it for each would add an event per job to the log.
        if recorded != code.value and (recorded is not None or code is not PendingReason.PRIORITY):
            decisions.append(ev.JobReasonChanged(job_id=job.job_id, reason=code.value, detail=detail))

    for job in state.pending.values():
        partition = job.partition
        if partition in done or job.job_id in state.cancel_requested or job.noop:
            continue
        if job.job_id in state.holds.waiting or job.job_id in state.doomed:
            continue
        evaluated[partition] = depth = evaluated.get(partition, 0) + 1
        explain = depth <= queue_depth
        members = partitions.get(partition)
        if not members or partition in blocked:
            if not explain:
                done.add(partition)
                if len(done) == len(state.queued):
                    break  # a deep queue costs nothing more once every partition is settled
            elif not members and partition in unavailable:
                down = ", ".join(unavailable[partition])
                reason(job, PendingReason.RESOURCES, f"no node of partition '{partition}' takes work now: {down}")
            elif not members:
                reason(job, PendingReason.PARTITION_DOWN, f"no node serves partition '{partition}'")
            else:
                reason(job, PendingReason.PRIORITY, "waiting behind an earlier job of its partition")
            continue
        too_big = _never_fits(job, members)
        if too_big is not None:
            if explain:
                held = held_away(job, away.get(partition, []))
                if held is None:
                    reason(job, PendingReason.RESOURCES_NEVER_SATISFIABLE, too_big)
                else:
                    reason(job, PendingReason.RESOURCES, held)
            continue
        target = next(
            (
                n
                for n in members
                if n.name not in held_nodes
                and len(room[n.name].cores) >= job.cpus
                and room[n.name].memory_mb >= job.memory_mb
            ),
            None,
        )
        if target is None:
            blocked.add(partition)
            held_for_another = any(
                n.name in held_nodes and len(room[n.name].cores) >= job.cpus and room[n.name].memory_mb >= job.memory_mb
                for n in members
            )
            held_nodes.update(n.name for n in members)  # a blocked partition's nodes take nothing more this cycle
            if explain:
                reason(job, PendingReason.RESOURCES, waits_for(job, held_for_another))
            continue
        free = room[target.name]
        cores, free.cores = free.cores[: job.cpus], free.cores[job.cpus :]
        free.memory_mb -= job.memory_mb
        decisions.append(
            ev.JobPlaced(job_id=job.job_id, node=target.name, cores=tuple(cores), memory_mb=job.memory_mb, run=job.run)
        )
    decisions += released_reasons(state, decisions)
    # Placements first: they start work; reasons only inform.
    return sorted(decisions, key=lambda d: isinstance(d, ev.JobReasonChanged))
