"""The scheduler's fold: the log, event by event, into ``ClusterState``.

``evolve`` is deterministic and does no I/O. It updates the state in place for speed (a queue of
thousands of jobs is folded per event) and returns it, so ``reduce(evolve, log, ClusterState())`` is
the whole state after a log. Placements in the log are applied as they are: the log is the truth, and
fencing guarantees the scheduler that wrote them had folded every earlier decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from conductor_contracts import dependencies as deps
from conductor_contracts import events as ev
from conductor_contracts.states import JobState, PendingReason
from conductor_scheduler.holds import Holds


@dataclass
class Node:
    name: str
    cpus: int
    memory_mb: int
    partitions: tuple[str, ...]
    free_cores: set[int] = field(default_factory=set)  # unused cores among 0..cpus-1
    # May go negative: a node can re-register smaller while its jobs run.
    free_memory_mb: int = 0
    # Cores held by running jobs, counted even when they are past a shrunken ``cpus``: capacity is a
    # count, so a freed low core is not free while the jobs on the lost high cores still run.
    alloc_cpus: int = 0
    # Declared lost (NodeLost) until it registers again; drained (with its reason) until resumed.
    lost: bool = False
    draining: str | None = None
    # The executor instance that registered it last ("": one older than instances), and whether that
    # one replaced another whose runs are still in the log: the node takes no work until the liveness
    # check has declared it lost, which ends those runs (liveness.py).
    instance: str = ""
    replaced: bool = False
    lost_reason: str = ""  # what the NodeLost said, for the jobs it ends

    @property
    def available(self) -> bool:
        return not self.lost and self.draining is None and not self.replaced

    @property
    def away_as(self) -> str:
        """Why it takes no work, for a reason's detail."""
        return "lost" if self.lost else "its executor replaced" if self.replaced else "drained"

    def usable_cores(self) -> list[int]:
        """The cores a new placement may take: free ones, as many as the capacity still allows."""
        return sorted(self.free_cores)[: max(0, self.cpus - self.alloc_cpus)]


# Slots: a pending job is one object without a dict of its own (a 100k-deep queue is 100k of them).
@dataclass(frozen=True, slots=True)
class PendingJob:
    job_id: int
    partition: str
    cpus: int
    memory_mb: int
    noop: bool = False
    requeue: bool = False
    run: int = 0  # how many times it was requeued
    submitted_at: float = 0.0  # the submission's time (a Unix time), for the oldest pending job's age
    # The W3C traceparent its JobSubmitted carried, as a plain string: the scheduler's decisions about
    # the job continue the trace of its submission (None: the submission was not traced).
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class Allocation:
    node: str
    cores: tuple[int, ...]
    memory_mb: int
    job: PendingJob  # what it was while pending: a requeued job is queued again as such
    run: int = 0
    placed_seq: int = 0  # its JobPlaced's stream sequence (0: not known, from an older snapshot)


@dataclass
class ClusterState:
    nodes: dict[str, Node] = field(default_factory=dict)
    pending: dict[int, PendingJob] = field(default_factory=dict)  # insertion order = submit order
    queued: dict[str, int] = field(default_factory=dict)  # pending jobs per partition
    running: dict[int, Allocation] = field(default_factory=dict)
    # Jobs whose cancel was requested while pending or running: a pending one is cancelled by the
    # policy, a running one by its executor (or by the policy, if its node is lost).
    cancel_requested: set[int] = field(default_factory=set)
    reasons: dict[int, str] = field(default_factory=dict)
    # Dependencies: every job's state, and the pending jobs a dependency holds (holds.py).
    holds: Holds = field(default_factory=Holds)
    # Pending jobs whose dependency can no longer hold, with why: the policy cancels them.
    doomed: dict[int, str] = field(default_factory=dict)
    # Pending no-op jobs free to go: the policy completes them.
    ready_noops: set[int] = field(default_factory=set)
    # Running jobs whose node was declared lost, with its name: the policy ends or requeues them.
    orphans: dict[int, str] = field(default_factory=dict)
    # Orphans whose run never started (their node refused the placement, or never got it before it
    # was lost), with why: the policy runs them again whether or not they asked to be requeued.
    unstarted: dict[int, str] = field(default_factory=dict)
    # Pending jobs a dependency let go that still show the reason Dependency: the policy gives each a
    # reason, "None" where it explains nothing (past queue_depth), as Slurm clears it at that moment.
    released: set[int] = field(default_factory=set)
    last_seq: int = 0
    # The stream sequence of the newest scheduler decision folded: the fencing token for the next one.
    last_scheduler_seq: int = 0
    # ``pending`` again, by partition: each job with its place in the whole queue (a number that only
    # grows), so that the policy walks the partitions side by side in queue order and leaves one
    # behind once nothing more can be decided there (a queue blocked behind a full partition costs
    # nothing). Derived from ``pending`` (built again from it when a state is made with jobs, as a
    # snapshot's is): the numbers themselves mean nothing and do not take part in comparisons.
    queues: dict[str, dict[int, int]] = field(default_factory=dict, compare=False, repr=False)
    enqueued: int = field(default=0, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.pending and not self.queues:
            for job in self.pending.values():
                self.enqueued += 1
                self.queues.setdefault(job.partition, {})[job.job_id] = self.enqueued


def _register(state: ClusterState, event: ev.NodeRegistered) -> None:
    used = [a for a in state.running.values() if a.node == event.node]
    busy = {core for a in used for core in a.cores}
    before = state.nodes.get(event.node)
    # Runs of another executor instance, which this one (another state folder) cannot have adopted:
    # nothing would ever report them. Not those a NodeLost has ended already (orphans).
    other = before is not None and bool(before.instance and event.instance) and before.instance != event.instance
    unreported = other and any(a.node == event.node and j not in state.orphans for j, a in state.running.items())
    replaced = before is not None and not before.lost and (before.replaced or unreported)
    state.nodes[event.node] = Node(
        name=event.node,
        cpus=event.cpus,
        memory_mb=event.memory_mb,
        partitions=tuple(event.partitions),
        free_cores=set(range(event.cpus)) - busy,
        free_memory_mb=event.memory_mb - sum(a.memory_mb for a in used),
        alloc_cpus=sum(len(a.cores) for a in used),
        # A drain outlives an executor restart, as in Slurm; being lost does not (it is back).
        draining=None if before is None else before.draining,
        instance=event.instance,
        replaced=replaced,
    )


def _enqueue(state: ClusterState, job: PendingJob) -> None:
    state.pending[job.job_id] = job
    state.queued[job.partition] = state.queued.get(job.partition, 0) + 1
    state.enqueued += 1
    state.queues.setdefault(job.partition, {})[job.job_id] = state.enqueued


def _dequeue(state: ClusterState, job_id: int) -> None:
    job = state.pending.pop(job_id, None)
    if job is None:
        return
    state.holds.forget(job_id)
    state.doomed.pop(job_id, None)
    state.ready_noops.discard(job_id)
    state.released.discard(job_id)
    left = state.queued[job.partition] - 1
    if left:
        state.queued[job.partition] = left
        del state.queues[job.partition][job_id]
    else:
        del state.queued[job.partition]
        del state.queues[job.partition]


def _settled(state: ClusterState, job_id: int, new: JobState) -> None:
    """``job_id`` moved to ``new``: decide the held jobs that this settles."""
    for held, verdict in state.holds.changed(job_id, new).items():
        if held not in state.pending:
            continue
        if verdict is deps.Verdict.NEVER:
            waiter_of = f"job {job_id} ended {new.value}" if new.is_terminal else f"job {job_id} is {new.value}"
            state.doomed[held] = f"its dependency can no longer be satisfied: {waiter_of}"
        elif state.pending[held].noop:
            state.ready_noops.add(held)
        elif state.reasons.get(held) == PendingReason.DEPENDENCY.value:
            state.released.add(held)  # keeps the reason Dependency until the policy gives it its new one


def _submitted(state: ClusterState, seq: int, event: ev.JobSubmitted, traceparent: str | None) -> None:
    job = PendingJob(
        seq,
        event.partition,
        event.cpus,
        event.memory_mb,
        noop=event.noop,
        requeue=event.requeue,
        submitted_at=event.occurred_at.timestamp(),
        traceparent=traceparent,
    )
    _enqueue(state, job)
    state.holds.submitted(seq, (event.account, event.name))
    dependency = event.dependency
    parents = event.parent_ids(seq)
    if parents:
        workflow = deps.on_parents(parents)
        dependency = (
            workflow if dependency is None else deps.Dependency(conditions=workflow.conditions + dependency.conditions)
        )
    if dependency is None:
        if job.noop:
            state.ready_noops.add(seq)
        return
    # What the read model shows from the submission on, without an event: the policy changes it.
    state.reasons[seq] = PendingReason.DEPENDENCY.value
    verdict = state.holds.hold(seq, dependency)
    if verdict is deps.Verdict.NEVER:
        because = _never_because(state, seq, dependency)
        state.doomed[seq] = f"its dependency {dependency} can never be satisfied{because}"
    elif verdict is deps.Verdict.HOLDS and job.noop:
        state.ready_noops.add(seq)
    elif verdict is deps.Verdict.HOLDS:  # satisfied already (a finished parent, a free singleton)
        state.released.add(seq)


def _never_because(state: ClusterState, job_id: int, dependency: deps.Dependency) -> str:
    """Which job makes a new job's dependency fail from the start (the first condition that can never
    hold), as ``: job N ended FAILED``; "" if none alone does."""
    for condition in dependency.conditions:
        if condition.kind is deps.Kind.SINGLETON:
            continue
        target = condition.job_id or 0
        current = state.holds.states.get(target) if target < job_id else None
        if deps.settle(condition.kind, current) is deps.Verdict.NEVER:
            return f": job {target} ended {current.value}" if current is not None else f": {target} is no job"
    return ""


def _free(state: ClusterState, job_id: int) -> None:
    state.orphans.pop(job_id, None)
    state.unstarted.pop(job_id, None)
    allocation = state.running.pop(job_id, None)
    if allocation is None:
        return
    node = state.nodes.get(allocation.node)
    if node is not None:
        node.free_cores.update(c for c in allocation.cores if c < node.cpus)
        node.free_memory_mb += allocation.memory_mb
        node.alloc_cpus -= len(allocation.cores)
        if node.alloc_cpus == 0:
            # The runs of the executor it replaced are all ended (reported by that one, which gave
            # the node up): nothing left for a NodeLost to end. No run was placed there since.
            node.replaced = False


def _of_current_run(state: ClusterState, event: ev.TerminalJobEvent) -> bool:
    """Whether an outcome is about the job's current run: one reported for an earlier run (its node
    was declared lost and the job requeued) changes nothing."""
    allocation = state.running.get(event.job_id)
    if allocation is not None:
        return event.run == allocation.run
    # Pending: only the scheduler ends it (a cancel, a dependency); a node's report is of an old run.
    return event.node is None or event.job_id not in state.pending


def _requeues(state: ClusterState, event: ev.JobFailed) -> bool:
    allocation = state.running.get(event.job_id)
    return allocation is not None and (allocation.job.requeue or event.never_started) and event.run == allocation.run


def _release(state: ClusterState, job_id: int, final: JobState) -> None:
    if state.holds.states.set(job_id, final):
        _settled(state, job_id, final)
    _dequeue(state, job_id)
    state.cancel_requested.discard(job_id)
    state.reasons.pop(job_id, None)
    _free(state, job_id)


def _requeue(state: ClusterState, event: ev.JobRequeued) -> None:
    allocation = state.running.get(event.job_id)
    if allocation is None or allocation.run != event.run:
        return
    _free(state, event.job_id)
    state.holds.states.set(event.job_id, JobState.PENDING)
    # At the end of the queue: its place in line was taken when it was placed.
    _enqueue(state, replace(allocation.job, run=event.run + 1))


def _lose(state: ClusterState, name: str, delivered: int | None, reason: str) -> None:
    node = state.nodes.get(name)
    if node is None or node.lost:
        return
    node.lost = True
    node.lost_reason = reason[:300]
    for job_id, allocation in state.running.items():
        if allocation.node == name:
            state.orphans[job_id] = name
            if delivered is not None and allocation.placed_seq > delivered:
                state.unstarted[job_id] = f"its placement never reached node {name} before the node was lost"


def evolve(
    state: ClusterState, seq: int, event: ev.Event, *, by_scheduler: bool = False, traceparent: str | None = None
) -> ClusterState:
    """Apply one event found at stream sequence ``seq``; ``by_scheduler`` marks a scheduler subject;
    ``traceparent``: the message's header, kept with a submitted job (never read: only carried)."""
    if seq <= state.last_seq:
        return state  # already folded: redelivery or an overlapping snapshot
    state.last_seq = seq
    if by_scheduler:
        state.last_scheduler_seq = seq
    match event:
        case ev.JobSubmitted():
            _submitted(state, seq, event, traceparent)
        case ev.JobCancelRequested(job_id=job_id):
            # Kept while the job runs too (its executor kills it): if its node is lost, it ends
            # cancelled rather than requeued.
            if job_id in state.pending or job_id in state.running:
                state.cancel_requested.add(job_id)
        case ev.JobPlaced(job_id=job_id):
            job = state.pending.get(job_id)
            if job is None:
                return state
            _dequeue(state, job_id)
            state.reasons.pop(job_id, None)
            state.running[job_id] = Allocation(event.node, tuple(event.cores), event.memory_mb, job, event.run, seq)
            node = state.nodes.get(event.node)
            if node is not None:
                node.free_cores.difference_update(event.cores)
                node.free_memory_mb -= event.memory_mb
                node.alloc_cpus += len(event.cores)
            if state.holds.states.set(job_id, JobState.RUNNING):
                _settled(state, job_id, JobState.RUNNING)
        case ev.JobReasonChanged(job_id=job_id, reason=reason):
            if job_id in state.pending:
                state.reasons[job_id] = reason
                state.released.discard(job_id)
        case ev.JobFailed(node_fail=True, job_id=job_id) if _requeues(state, event):
            # Its node failed under it (its supervisor vanished, or its executor fenced it off): a
            # job that asked to be requeued is, as if its node had been declared lost. So is one whose
            # node refused it before it started: nothing of it ran.
            state.orphans[job_id] = event.node
            if event.never_started:
                state.unstarted[job_id] = f"node {event.node} refused its run before it started: {event.message}"
        case ev.JobCompleted() | ev.JobFailed() | ev.JobTimedOut() | ev.JobOutOfMemory() | ev.JobCancelled():
            if _of_current_run(state, event):
                _release(state, event.job_id, ev.final_state(event))
        case ev.JobRequeued():
            _requeue(state, event)
        case ev.NodeLost(node=name, delivered=delivered, reason=reason):
            _lose(state, name, delivered, reason)
        case ev.NodeDrainRequested(node=name, reason=reason):
            if name in state.nodes:
                state.nodes[name].draining = reason
        case ev.NodeResumeRequested(node=name):
            if name in state.nodes:
                state.nodes[name].draining = None
        case ev.NodeRegistered():
            _register(state, event)
        case _:
            pass
    return state
