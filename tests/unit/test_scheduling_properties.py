"""Invariants of fold + policy over arbitrary logs: never over-allocate, never place twice, replay."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from conductor_contracts import events as ev
from tests.unit.scheduling import Log, node, replay, submitted

nodes = st.lists(
    st.tuples(st.integers(1, 8), st.integers(100, 4000), st.sampled_from([("default",), ("gpu",), ("default", "gpu")])),
    min_size=0,
    max_size=4,
)
actions = st.lists(
    st.one_of(
        st.tuples(
            st.just("submit"),
            st.integers(1, 10),
            st.integers(1, 5000),
            st.sampled_from(["default", "gpu"]),
            st.booleans(),  # requeue
        ),
        # A node declared lost, drained or resumed; a report of a run that is no longer current.
        st.tuples(st.sampled_from(["lose", "drain", "resume"]), st.integers(0, 3)),
        # Lost, saying how far its executor was handed its placements: those after never started.
        st.tuples(st.just("lose"), st.integers(0, 3), st.floats(0, 1)),
        st.tuples(st.just("late"), st.integers(0, 50)),
        st.tuples(
            st.just("finish"), st.integers(0, 50), st.sampled_from(["completed", "failed", "cancelled", "refused"])
        ),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
        st.tuples(st.just("schedule")),
        # An executor restarted with another size while its jobs run; on another state folder (another
        # instance), it replaces the one before, whose runs must end before the node takes work.
        st.tuples(
            st.just("register"), st.integers(0, 3), st.integers(1, 8), st.integers(100, 4000), st.sampled_from("aab")
        ),
    ),
    max_size=60,
)


def _run(node_specs: list[tuple[int, int, tuple[str, ...]]], steps: list[tuple[Any, ...]]) -> Log:
    log = Log()
    for i, (cpus, mem, parts) in enumerate(node_specs):
        log.append(node(f"n{i}", cpus, mem, parts).model_copy(update={"instance": "a"}))
    submitted_ids: list[int] = []
    for step in steps:
        match step:
            case ("submit", cpus, mem, partition, requeue):
                submitted_ids.append(log.append(submitted(int(cpus), int(mem), str(partition), requeue=bool(requeue))))
            case ("submit", cpus, mem, partition):
                submitted_ids.append(log.append(submitted(int(cpus), int(mem), str(partition))))
            case ("lose", index, *through) if node_specs:
                delivered = int(float(through[0]) * len(log.events)) if through else None
                log.append(ev.NodeLost(node=f"n{int(index) % len(node_specs)}", delivered=delivered), by_scheduler=True)
            case ("drain", index) if node_specs:
                log.append(ev.NodeDrainRequested(node=f"n{int(index) % len(node_specs)}"))
            case ("resume", index) if node_specs:
                log.append(ev.NodeResumeRequested(node=f"n{int(index) % len(node_specs)}"))
            case ("late", index) if submitted_ids:
                job_id = submitted_ids[int(index) % len(submitted_ids)]
                runs = [e.run for _, e, _ in log.events if isinstance(e, ev.JobRequeued) and e.job_id == job_id]
                if runs:  # the executor of the lost node reports its run, long after
                    log.append(ev.JobCompleted(job_id=job_id, node="n0", run=max(runs)))
            case ("finish", index, how) if log.state.running:
                job_id = sorted(log.state.running)[int(index) % len(log.state.running)]
                where, run = log.state.running[job_id].node, log.state.running[job_id].run
                outcomes: dict[str, ev.Event] = {
                    "completed": ev.JobCompleted(job_id=job_id, node=where, run=run),
                    "failed": ev.JobFailed(job_id=job_id, node=where, exit_code=1, run=run),
                    "cancelled": ev.JobCancelled(job_id=job_id, node=where, run=run),
                    # Its node refused the placement before it started (back smaller): runs again.
                    "refused": ev.JobFailed(
                        job_id=job_id, node=where, exit_code=None, node_fail=True, never_started=True, run=run
                    ),
                }
                outcome = outcomes[str(how)]
                log.append(outcome)
            case ("cancel", index) if submitted_ids:
                log.append(ev.JobCancelRequested(job_id=submitted_ids[int(index) % len(submitted_ids)]))
            case ("schedule",):
                _schedule(log)
            case ("register", index, cpus, mem, *instance) if node_specs:
                i = int(index) % len(node_specs)
                again = node(f"n{i}", int(cpus), int(mem), node_specs[i][2])
                log.append(again.model_copy(update={"instance": str(instance[0]) if instance else "a"}))
        _check_no_overallocation(log)
    _schedule(log)
    _check_no_overallocation(log)
    return log


def _schedule(log: Log) -> None:
    """A round of decisions; every node that got a placement holds no more than its capacity, even
    when it re-registered smaller under running jobs (those are let finish, nothing joins them)."""
    decisions = log.schedule()
    for name in {d.node for d in decisions if isinstance(d, ev.JobPlaced)}:
        n = log.state.nodes[name]
        assert n.available, f"{name} got work while lost or drained"
        held = [a for a in log.state.running.values() if a.node == name]
        assert sum(len(a.cores) for a in held) <= n.cpus, f"{name} over-allocated CPUs"
        assert sum(a.memory_mb for a in held) <= n.memory_mb, f"{name} over-allocated memory"


def _check_no_overallocation(log: Log) -> None:
    queued: dict[str, int] = {}
    for job in log.state.pending.values():
        queued[job.partition] = queued.get(job.partition, 0) + 1
    assert queued == log.state.queued
    assert set(log.state.queues) == set(queued)
    for partition, queue in log.state.queues.items():  # the pending jobs again, by partition, in order
        assert list(queue) == [j for j, job in log.state.pending.items() if job.partition == partition]
        assert list(queue.values()) == sorted(queue.values())
    for name, n in log.state.nodes.items():
        given_out = [a for a in log.state.running.values() if a.node == name]
        cores = [c for a in given_out for c in a.cores]
        assert len(cores) == len(set(cores)), "a core given to two jobs"
        assert all(c >= 0 for c in cores)
        assert set(cores).isdisjoint(n.free_cores)
        assert n.free_cores | {c for c in cores if c < n.cpus} == set(range(n.cpus))
        assert n.alloc_cpus == len(cores)
        assert sum(a.memory_mb for a in given_out) + n.free_memory_mb == n.memory_mb


@settings(max_examples=300, deadline=None)
@given(nodes, actions)
@example(  # placed, its node lost before it was delivered (run again), then cancelled while pending
    [(1, 100, ("default",))],
    [("submit", 1, 1, "default", False), ("schedule",), ("lose", 0, 0.0), ("schedule",), ("cancel", 0)],
)
def test_never_overallocates_and_never_places_twice(node_specs: list[Any], steps: list[tuple[Any, ...]]) -> None:
    log = _run(node_specs, steps)
    # A job is placed again only as its next run, after its previous run was requeued: never twice at once.
    runs: dict[int, int] = {}
    running: set[int] = set()
    cancelled_pending: set[int] = set()  # cancelled by the scheduler while pending: never placed after
    for _, e, _ in log.events:
        if isinstance(e, ev.JobPlaced):
            assert e.run == runs.get(e.job_id, 0), f"job {e.job_id} placed as run {e.run}"
            assert e.job_id not in cancelled_pending, f"job {e.job_id} placed after its cancel"
            runs[e.job_id] = e.run + 1
            running.add(e.job_id)
        elif isinstance(e, ev.JobRequeued):
            assert runs.get(e.job_id) == e.run + 1, f"job {e.job_id} requeued while not running"
            running.discard(e.job_id)
        elif isinstance(e, ev.JobCancelled) and e.node is None:
            # Pending: never placed, or placed and requeued since (a lost node's run); not running.
            assert e.job_id not in running, f"job {e.job_id} cancelled as pending while it runs"
            cancelled_pending.add(e.job_id)
        elif isinstance(e, ev.TERMINAL_JOB_EVENTS):
            running.discard(e.job_id)


@settings(max_examples=200, deadline=None)
@given(nodes, actions)
def test_replaying_the_log_gives_the_same_state_and_no_new_decision(
    node_specs: list[Any], steps: list[tuple[Any, ...]]
) -> None:
    log = _run(node_specs, steps)
    again = replay(log.events)
    assert again == log.state
    first = _run(node_specs, steps)
    assert first.placements() == log.placements()


# One node resized again and again under small jobs: the case where a shrunken node's freed low cores
# used to be handed out while jobs still held its lost high cores.
resizes = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 3), st.integers(1, 300), st.just("default")),
        st.tuples(st.just("finish"), st.integers(0, 50), st.just("completed")),
        st.tuples(st.just("schedule")),
        st.tuples(st.just("register"), st.just(0), st.integers(1, 6), st.integers(100, 1000)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), resizes)
@example(  # the shape found on a running system: 2 CPUs, cut to 1 under two jobs
    2,
    [
        ("submit", 1, 10, "default"),
        ("submit", 1, 10, "default"),
        ("schedule",),
        ("register", 0, 1, 1000),
        ("finish", 0, "completed"),
        ("submit", 1, 10, "default"),
    ],
)
def test_a_resized_node_is_never_given_more_than_it_has(cpus: int, steps: list[tuple[Any, ...]]) -> None:
    _run([(cpus, 1000, ("default",))], steps)
