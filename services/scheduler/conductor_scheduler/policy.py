"""The scheduling policy: FIFO + first fit, per partition. Pure: state in, decisions out.

- Jobs are taken in submit order. A job goes to the first node (by name) of its partition with enough
  free cores and memory, and gets the lowest-numbered free cores.
- A job that does not fit now blocks the jobs behind it in its partition (strict FIFO: no backfill),
  so a big job is not starved by a stream of small ones; and the nodes of that partition take no job
  of another partition in that cycle either (Slurm's builtin scheduler does the same), or a stream of
  small jobs of a partition sharing its nodes would starve it all the same.
- A job larger than every node of its partition could ever hold does not block anyone: it waits with
  reason ResourcesNeverSatisfiable, and a bigger node registering later can still take it.
- A job held by a dependency is passed over (reason Dependency, set at submit): it blocks nobody. One
  whose dependency can no longer hold is cancelled (DependencyNeverSatisfied); a no-op job whose
  dependency holds is completed without a node.
- Reasons are evaluated for the first ``queue_depth`` pending jobs of each partition (Slurm's
  default_queue_depth) and emitted only when they change, so a deep queue does not flood the log.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from conductor_contracts import events as ev
from conductor_contracts.states import PendingReason
from conductor_scheduler.state import ClusterState, Node, PendingJob

Decision = ev.JobPlaced | ev.JobCancelled | ev.JobCompleted | ev.JobFailed | ev.JobRequeued | ev.JobReasonChanged


class _Room:
    """What a node still offers new placements in this cycle. Its free cores are listed (sorted) only
    when a job is placed on it: a cycle costs nothing per idle core of the nodes it only looks at."""

    __slots__ = ("_cores", "count", "held", "memory_mb", "node")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.count = min(len(node.free_cores), max(0, node.cpus - node.alloc_cpus))  # len(usable_cores())
        self.memory_mb = node.free_memory_mb
        self._cores: list[int] | None = None
        # Kept for a blocked partition's head job: nothing more goes here in this cycle.
        self.held = False

    def fits(self, job: PendingJob) -> bool:
        return not self.held and self.count >= job.cpus and self.memory_mb >= job.memory_mb

    def take(self, job: PendingJob) -> tuple[int, ...]:
        """The lowest-numbered free cores for ``job``, and its memory."""
        cores = self.node.usable_cores() if self._cores is None else self._cores
        taken, self._cores = cores[: job.cpus], cores[job.cpus :]
        self.count -= job.cpus
        self.memory_mb -= job.memory_mb
        return tuple(taken)


class _FirstFit:
    """First fit over a partition's nodes (by name), for many jobs in one cycle. Within a cycle a
    node only loses room, so a node found too small for a job of some size stays too small for the
    next job of that size: each size resumes where the last one of its size was placed, and a cycle
    looks at each node about once per job size rather than once per job."""

    def __init__(self, rooms: list[_Room]) -> None:
        self.rooms = rooms
        self.resume: dict[tuple[int, int], int] = {}  # (cpus, memory) -> the first node that may fit
        self.never: dict[tuple[int, int], str | None] = {}

    def place(self, job: PendingJob) -> _Room | None:
        size = (job.cpus, job.memory_mb)
        rooms, i = self.rooms, self.resume.get(size, 0)
        while i < len(rooms) and not rooms[i].fits(job):
            i += 1
        self.resume[size] = i
        return rooms[i] if i < len(rooms) else None

    def never_fits(self, job: PendingJob) -> str | None:
        size = (job.cpus, job.memory_mb)
        if size not in self.never:
            self.never[size] = _never_fits(job, [r.node for r in self.rooms])
        return self.never[size]


def _never_fits(job: PendingJob, nodes: list[Node]) -> str | None:
    if any(job.cpus <= n.cpus and job.memory_mb <= n.memory_mb for n in nodes):
        return None
    biggest = max(nodes, key=lambda n: (n.cpus, n.memory_mb))
    return (
        f"asks {job.cpus} CPUs and {job.memory_mb}M of memory; the largest node of partition "
        f"'{job.partition}' ({biggest.name}) has {biggest.cpus} CPUs and {biggest.memory_mb}M"
    )


def held_away(job: PendingJob, away: list[Node]) -> str | None:
    """Why a job too big for every node of its partition that takes work waits all the same: one
    drained or lost would hold it (it was ResourcesNeverSatisfiable, naming a smaller node as the
    largest, until the drained one was resumed and ran it). None when none would."""
    able = [n for n in away if job.cpus <= n.cpus and job.memory_mb <= n.memory_mb]
    if not able:
        return None
    names = ", ".join(f"{n.name} ({n.away_as})" for n in able)
    return f"only nodes that take no work now could hold it ({job.cpus} CPUs, {job.memory_mb}M): {names}"


def waits_for(job: PendingJob, held_for_another: bool) -> str:
    """The detail of a job that does not fit now. ``held_for_another``: a node of its partition has the
    room, but an earlier job of another partition sharing it is waiting for it (it said the CPUs were
    not free while GET /nodes showed them free)."""
    if held_for_another:
        return (
            f"waits for {job.cpus} CPUs and {job.memory_mb}M: the nodes that have them are held for an earlier "
            "job of another partition that does not fit yet"
        )
    return f"waits for {job.cpus} CPUs and {job.memory_mb}M to be free"


def _in_line(state: ClusterState, done: set[str]) -> Iterator[PendingJob]:
    """The pending jobs in queue order, the partitions side by side; a partition found in ``done`` is
    left: none of its jobs behind is even looked at."""
    if len(state.queues) == 1:  # the usual case: no merge
        [(partition, queue)] = state.queues.items()
        for job_id in queue:
            if partition in done:
                return
            yield state.pending[job_id]
        return
    heads = []
    for partition, queue in state.queues.items():
        line = iter(queue.items())
        job_id, place = next(line)  # a queue is never empty: it goes with its last job
        heads.append((place, partition, job_id, line))
    heapq.heapify(heads)
    while heads:
        _, partition, job_id, line = heads[0]
        if partition in done:
            heapq.heappop(heads)
            continue
        yield state.pending[job_id]
        following = next(line, None)
        if following is None:
            heapq.heappop(heads)
        else:
            heapq.heapreplace(heads, (following[1], partition, following[0], line))


# Slurm's MaxBatchRequeue: a job requeued this many times ends FAILED the next time its run is lost
# (a job that kills its supervisor would otherwise run again and again, each run a folder on its node).
MAX_REQUEUES = 5


def _orphaned(state: ClusterState, max_requeues: int = MAX_REQUEUES) -> list[Decision]:
    """The running jobs of lost nodes, and the requeue jobs whose run failed under them: cancelled
    when that was asked, requeued when they asked to be (at most ``max_requeues`` times), NODE_FAIL
    otherwise."""
    decisions: list[Decision] = []
    for job_id, name in sorted(state.orphans.items()):
        allocation = state.running.get(job_id)
        if allocation is None:
            continue
        node = state.nodes.get(name)
        unstarted = state.unstarted.get(job_id)
        if unstarted is not None:  # nothing of it ran: run again, requeue or not
            why = unstarted
        elif node is not None and node.lost and node.lost_reason:
            why = f"node {name} was lost: {node.lost_reason}"
        elif node is None or node.lost:
            why = f"node {name} was lost (its executor went silent)"
        else:  # its executor said so: the job's supervisor vanished, or the executor fenced it off
            why = f"its run on node {name} ended without a record of how (a node failure)"
        again = allocation.job.requeue or unstarted is not None
        if job_id in state.cancel_requested:  # not run again: its user cancelled it
            decisions.append(ev.JobCancelled(job_id=job_id, node=name, run=allocation.run))
        elif again and allocation.run < max_requeues:
            decisions.append(ev.JobRequeued(job_id=job_id, node=name, run=allocation.run, reason=why))
        elif again:
            # Not node_fail: that would make it an orphan again, and the read model waits for a
            # requeue after a requeue job's NODE_FAIL.
            message = f"{why}; requeued {allocation.run} times already, the most allowed (CONDUCTOR_MAX_REQUEUES)"
            decisions.append(
                ev.JobFailed(job_id=job_id, node=name, exit_code=None, message=message, run=allocation.run)
            )
        else:
            message = f"{why}; how the job ended is unknown"
            decisions.append(
                ev.JobFailed(
                    job_id=job_id, node=name, exit_code=None, node_fail=True, message=message, run=allocation.run
                )
            )
    return decisions


def decide_losing(
    state: ClusterState, losing: set[str], *, queue_depth: int = 100, max_requeues: int = MAX_REQUEUES
) -> list[Decision]:
    """``decide`` in a cycle that also declares the nodes ``losing`` lost: nothing is placed on them.
    Their NodeLosts go first in the cycle's batch, and a placement after a node's NodeLost is no run
    the loss ends: it stayed RUNNING for good on a node that never came back (review of 2026-12-02).
    The nodes are taken as lost while deciding, as the fold will take them."""
    flipped = [n for name in sorted(losing) if (n := state.nodes.get(name)) is not None and not n.lost]
    for n in flipped:
        n.lost = True
    try:
        return decide(state, queue_depth=queue_depth, max_requeues=max_requeues)
    finally:
        for n in flipped:
            n.lost = False


def decide(state: ClusterState, *, queue_depth: int = 100, max_requeues: int = MAX_REQUEUES) -> list[Decision]:
    decisions: list[Decision] = _orphaned(state, max_requeues)
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
    room = {n.name: _Room(n) for n in nodes if n.available}  # shared by the partitions a node serves
    members_of: dict[str, list[_Room]] = {}  # the nodes that may take work now
    unavailable: dict[str, list[str]] = {}  # the lost or drained ones, for the reason's detail
    away: dict[str, list[Node]] = {}
    for n in nodes:
        for partition in n.partitions:
            if n.available:
                members_of.setdefault(partition, []).append(room[n.name])
            else:
                unavailable.setdefault(partition, []).append(f"{n.name} {n.away_as}")
                away.setdefault(partition, []).append(n)
    partitions = {partition: _FirstFit(rooms) for partition, rooms in members_of.items()}
    blocked: set[str] = set()  # a job there did not fit: strict FIFO holds the rest back
    done: set[str] = set()  # blocked or down, and past queue_depth: nothing more to decide there
    evaluated: dict[str, int] = {}

    def reason(job: PendingJob, code: PendingReason, detail: str = "") -> None:
        recorded = state.reasons.get(job.job_id)
        # Waiting one's turn is what a pending job with no reason does: Priority is recorded only to
        # replace another reason. In a busy cluster nearly every job enters the explained window, so
        # recording it for each would add an event per job to the log.
        if recorded != code.value and (recorded is not None or code is not PendingReason.PRIORITY):
            decisions.append(ev.JobReasonChanged(job_id=job.job_id, reason=code.value, detail=detail))

    for job in _in_line(state, done):
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
        too_big = members.never_fits(job)
        if too_big is not None:
            if explain:
                held = held_away(job, away.get(partition, []))
                if held is None:
                    reason(job, PendingReason.RESOURCES_NEVER_SATISFIABLE, too_big)
                else:
                    reason(job, PendingReason.RESOURCES, held)
            continue
        target = members.place(job)
        if target is None:
            blocked.add(partition)
            held_for_another = any(
                r.held and r.count >= job.cpus and r.memory_mb >= job.memory_mb for r in members.rooms
            )
            for kept in members.rooms:
                kept.held = True
            if explain:
                reason(job, PendingReason.RESOURCES, waits_for(job, held_for_another))
            continue
        cores = target.take(job)
        decisions.append(
            ev.JobPlaced(job_id=job.job_id, node=target.node.name, cores=cores, memory_mb=job.memory_mb, run=job.run)
        )
    decisions += released_reasons(state, decisions)
    # Placements first: they start work; reasons only inform.
    return sorted(decisions, key=lambda d: isinstance(d, ev.JobReasonChanged))


def released_reasons(state: ClusterState, decisions: list[Decision]) -> list[Decision]:
    """The reason None for the jobs a dependency let go that this cycle decided nothing about (past
    queue_depth, or behind a partition settled early): else they would show Dependency until their
    turn came to be explained."""
    if not state.released:
        return []
    decided = {d.job_id for d in decisions}
    return [
        ev.JobReasonChanged(job_id=job_id, reason=PendingReason.NONE.value)
        for job_id in sorted(state.released)
        if job_id in state.pending and job_id not in decided
    ]
