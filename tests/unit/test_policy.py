from conductor_contracts import events as ev
from conductor_contracts.states import PendingReason
from conductor_scheduler.policy import decide
from conductor_scheduler.state import ClusterState, evolve
from tests.unit.scheduling import Log, node, submitted


def test_first_fit_in_submit_order_with_concrete_cores() -> None:
    log = Log()
    log.append(node("a", 2))
    log.append(node("b", 4))
    j1, j2, j3 = (log.append(submitted(cpus=c)) for c in (2, 3, 1))
    log.schedule()
    assert log.placements() == [(j1, "a", (0, 1)), (j2, "b", (0, 1, 2)), (j3, "b", (3,))]


def test_a_job_that_does_not_fit_blocks_those_behind_it() -> None:
    log = Log()
    log.append(node("a", 2))
    first = log.append(submitted(cpus=2))
    big = log.append(submitted(cpus=2))
    small = log.append(submitted(cpus=1))
    log.schedule()
    assert [p[0] for p in log.placements()] == [first]
    assert log.state.reasons == {big: PendingReason.RESOURCES.value}  # small waits its turn: no reason recorded
    assert small not in log.state.reasons
    log.append(ev.JobCompleted(job_id=first, node="a"))
    log.schedule()
    assert [p[0] for p in log.placements()] == [first, big]


def test_memory_counts_as_much_as_cores() -> None:
    log = Log()
    log.append(node("a", 8, memory_mb=1000))
    log.append(submitted(memory_mb=800))
    second = log.append(submitted(memory_mb=800))
    log.schedule()
    assert len(log.placements()) == 1
    assert log.state.reasons[second] == PendingReason.RESOURCES.value


def test_a_job_bigger_than_every_node_waits_with_a_reason_and_blocks_no_one() -> None:
    log = Log()
    log.append(node("a", 2, memory_mb=4096))
    huge = log.append(submitted(cpus=4, memory_mb=8192))
    small = log.append(submitted(cpus=1))
    decisions = log.schedule()
    assert [p[0] for p in log.placements()] == [small]
    reason = next(d for d in decisions if isinstance(d, ev.JobReasonChanged))
    assert reason.job_id == huge and reason.reason == PendingReason.RESOURCES_NEVER_SATISFIABLE.value
    assert "asks 4 CPUs" in reason.detail and "2 CPUs" in reason.detail
    log.append(node("big", 8, memory_mb=16384))
    log.schedule()
    assert (huge, "big", (0, 1, 2, 3)) in log.placements()


def test_a_job_only_a_drained_node_could_hold_waits_for_it_and_says_so() -> None:
    # It was ResourcesNeverSatisfiable, naming the small node as the partition's largest.
    log = Log()
    log.append(node("big", 8))
    log.append(node("small", 2))
    log.append(ev.NodeDrainRequested(node="big", reason="disk swap"))
    wide = log.append(submitted(cpus=6))
    small = log.append(submitted(cpus=1))
    decisions = log.schedule()
    assert [p[0] for p in log.placements()] == [small]  # it blocks no one meanwhile
    reason = next(d for d in decisions if isinstance(d, ev.JobReasonChanged))
    assert reason.job_id == wide and reason.reason == PendingReason.RESOURCES.value
    assert "only nodes that take no work now could hold it" in reason.detail and "big (drained)" in reason.detail


def test_partitions_are_separate_queues() -> None:
    log = Log()
    log.append(node("cpu1", 1, partitions=("cpu",)))
    log.append(node("gpu1", 1, partitions=("gpu",)))
    c = log.append(submitted(partition="cpu"))
    log.append(submitted(partition="cpu"))
    g = log.append(submitted(partition="gpu"))
    lonely = log.append(submitted(partition="nowhere"))
    log.schedule()
    assert {(p[0], p[1]) for p in log.placements()} == {(c, "cpu1"), (g, "gpu1")}
    assert log.state.reasons[lonely] == PendingReason.PARTITION_DOWN.value


def test_reasons_are_emitted_only_when_they_change() -> None:
    log = Log()
    log.append(node("a", 1))
    log.append(submitted())
    log.append(submitted())
    assert any(isinstance(d, ev.JobReasonChanged) for d in log.schedule())
    assert log.schedule() == []


def test_cancel_of_a_pending_job_is_decided_by_the_scheduler() -> None:
    log = Log()
    job = log.append(submitted())
    log.append(ev.JobCancelRequested(job_id=job))
    decisions = log.schedule()
    assert decisions == [
        ev.JobCancelled(job_id=job, event_id=decisions[0].event_id, occurred_at=decisions[0].occurred_at)
    ]
    assert job not in log.state.pending
    log.append(node("a", 1))
    assert log.schedule() == []


def test_completion_frees_exactly_what_was_given() -> None:
    log = Log()
    log.append(node("a", 4, memory_mb=1000))
    j = log.append(submitted(cpus=3, memory_mb=600))
    log.schedule()
    assert log.state.nodes["a"].free_cores == {3}
    log.append(ev.JobFailed(job_id=j, node="a", exit_code=1))
    log.append(ev.JobFailed(job_id=j, node="a", exit_code=1))  # a redelivered outcome frees nothing twice
    assert log.state.nodes["a"].free_cores == {0, 1, 2, 3}
    assert log.state.nodes["a"].free_memory_mb == 1000


def test_reregistration_keeps_running_allocations() -> None:
    log = Log()
    log.append(node("a", 2))
    log.append(submitted(cpus=1))
    log.schedule()
    log.append(node("a", 2))  # the executor restarted
    assert log.state.nodes["a"].free_cores == {1}


def test_fold_ignores_an_event_seen_before() -> None:
    state = ClusterState()
    evolve(state, 1, submitted())
    evolve(state, 1, submitted())
    assert list(state.pending) == [1]


def test_a_second_placement_of_a_job_allocates_nothing() -> None:
    log = Log()
    log.append(node("a", 2))
    j = log.append(submitted())
    log.schedule()
    log.append(ev.JobPlaced(job_id=j, node="a", cores=(1,), memory_mb=100), by_scheduler=True)
    assert log.state.nodes["a"].free_cores == {1}
    assert decide(log.state) == []


def test_reasons_stop_at_the_queue_depth() -> None:
    log = Log()
    log.append(node("a", 1))
    jobs = [log.append(submitted()) for _ in range(30)]
    lonely = [log.append(submitted(partition="down")) for _ in range(30)]
    reasons = [d for d in decide(log.state, queue_depth=5) if isinstance(d, ev.JobReasonChanged)]
    # default: one placed, the next waits for Resources, the 3 after it wait their turn (no reason
    # recorded); down: the first 5 explained; the rest stay quiet
    assert [r.job_id for r in reasons] == jobs[1:2] + lonely[:5]


def test_priority_is_recorded_only_to_replace_another_reason() -> None:
    log = Log()
    waiting = [log.append(submitted(partition="late")) for _ in range(4)]
    log.schedule()
    assert {log.state.reasons[j] for j in waiting} == {PendingReason.PARTITION_DOWN.value}
    log.append(node("a", 1, partitions=("late",)))
    decisions = log.schedule()
    assert [p[0] for p in log.placements()] == waiting[:1]
    changed = {d.job_id: d.reason for d in decisions if isinstance(d, ev.JobReasonChanged)}
    # the stale PartitionDown gives way: Resources for the next in line, Priority behind it
    assert changed == {waiting[1]: "Resources", waiting[2]: "Priority", waiting[3]: "Priority"}
    fresh = log.append(submitted(partition="late"))
    assert not [d for d in log.schedule() if isinstance(d, ev.JobReasonChanged)]
    assert fresh not in log.state.reasons


def test_a_deep_queue_still_places_whatever_fits() -> None:
    log = Log()
    log.append(node("a", 64, memory_mb=64_000))
    jobs = [log.append(submitted()) for _ in range(40)]
    placed = [d.job_id for d in decide(log.state, queue_depth=5) if isinstance(d, ev.JobPlaced)]
    assert placed == jobs


def test_a_node_that_re_registers_smaller_takes_nothing_new_until_its_jobs_fit() -> None:
    log = Log()
    log.append(node("n1", 4))
    jobs = [log.append(submitted(1)) for _ in range(4)]
    log.schedule()
    assert sorted(log.state.running) == jobs
    log.append(node("n1", 1))  # the executor came back with one CPU; its four jobs still run
    log.append(ev.JobCompleted(job_id=jobs[0], node="n1"))  # frees core 0, but three jobs still hold CPUs
    waiting = log.append(submitted(1))
    assert not [d for d in log.schedule() if isinstance(d, ev.JobPlaced)]
    assert log.state.reasons[waiting] == "Resources"
    for job_id in jobs[1:]:
        log.append(ev.JobCompleted(job_id=job_id, node="n1"))
    [placed] = [d for d in log.schedule() if isinstance(d, ev.JobPlaced)]
    assert (placed.job_id, placed.cores) == (waiting, (0,))


def test_a_node_that_re_registers_with_less_memory_is_not_over_committed() -> None:
    log = Log()
    log.append(node("n1", 4, memory_mb=1000))
    first = log.append(submitted(1, memory_mb=600))
    log.schedule()
    log.append(node("n1", 4, memory_mb=500))
    log.append(submitted(1, memory_mb=100))
    assert not [d for d in log.schedule() if isinstance(d, ev.JobPlaced)]
    log.append(ev.JobCompleted(job_id=first, node="n1"))
    assert [d for d in log.schedule() if isinstance(d, ev.JobPlaced)]


def test_a_blocked_partition_s_nodes_take_no_job_of_another_partition_that_cycle() -> None:
    # A 4-CPU job of pa waited while every later 1-CPU job of pb ran on the node they share: a steady
    # stream of them held it back for ever (Slurm's builtin scheduler holds the nodes back too).
    log = Log()
    log.append(node("a-shared", 4, partitions=("pa", "pb")))
    log.append(node("z-pb-only", 1, partitions=("pb",)))
    running = log.append(submitted(cpus=1, partition="pb"))
    log.schedule()
    big = log.append(submitted(cpus=4, partition="pa"))
    later = [log.append(submitted(cpus=1, partition="pb")) for _ in range(3)]
    decisions = log.schedule()
    placed = {p[0]: p[1] for p in log.placements()}
    assert placed == {running: "a-shared", later[0]: "z-pb-only"}  # the node of pb alone still takes work
    # Not "waits for 1 CPUs to be free": a-shared has three, held for the big job.
    [why] = [d.detail for d in decisions if isinstance(d, ev.JobReasonChanged) and d.job_id == later[1]]
    assert "held for an earlier job of another partition" in why
    log.append(ev.JobCompleted(job_id=running, node="a-shared"))
    log.schedule()
    assert {p[0]: p[1] for p in log.placements()}[big] == "a-shared"
