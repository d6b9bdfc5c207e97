"""What one decision cycle costs (not a test): ``decide`` on folded states, no NATS. It must not grow
with the idle cores of the cluster, nor with the depth of the queue behind a blocked partition.

    python bench/decide_cost.py

Each line: the least CPU time of a few cycles, in-process, on a state built by ``evolve``.
"""

from __future__ import annotations

import time

from conductor_contracts import events as ev
from conductor_scheduler.policy import decide
from conductor_scheduler.state import ClusterState, evolve


def _job(partition: str) -> ev.JobSubmitted:
    return ev.JobSubmitted(
        name="d", account="bench", partition=partition, ntasks_per_node=1, cpus_per_task=1, cpus=1, memory_mb=1,
        time_limit_s=60, working_directory="/tmp", standard_output="", standard_error=None, script="true",
    )  # fmt: skip


class Built:
    def __init__(self) -> None:
        self.state = ClusterState()
        self.seq = 0

    def add(self, event: ev.Event, by_scheduler: bool = False) -> int:
        self.seq += 1
        evolve(self.state, self.seq, event, by_scheduler=by_scheduler)
        return self.seq


def cluster(nodes: int, cores: int, busy: int, queued: dict[str, int], other_nodes: int = 0) -> ClusterState:
    """``nodes`` of ``cores`` in partition "a" with ``busy`` cores each taken, ``other_nodes`` idle in
    "b", and ``queued`` jobs per partition (one CPU each), in that order."""
    built = Built()
    for i in range(nodes):
        built.add(ev.NodeRegistered(node=f"a{i:05d}", cpus=cores, memory_mb=cores * 4096, partitions=("a",)))
    for i in range(other_nodes):
        built.add(ev.NodeRegistered(node=f"b{i:05d}", cpus=cores, memory_mb=cores * 4096, partitions=("b",)))
    for i in range(nodes):
        for core in range(busy):
            job = built.add(_job("a"))
            built.add(ev.JobPlaced(job_id=job, node=f"a{i:05d}", cores=(core,), memory_mb=1), by_scheduler=True)
    for partition, count in queued.items():
        for _ in range(count):
            built.add(_job(partition))
    return built.state


def cost_ms(state: ClusterState, rounds: int = 9) -> float:
    times = []
    for _ in range(rounds):
        started = time.process_time()
        decide(state)
        times.append(time.process_time() - started)
    return 1000 * min(times)  # CPU time, the least of a few: the machine is shared


def main() -> None:
    print("SCNS-Conductor: one decision cycle's CPU (ms, least of 9), 1,000 nodes x 32 cores")
    # Placing 100 jobs: on an idle cluster, and on one where every node has one core left.
    idle = cost_ms(cluster(1000, 32, 0, {"a": 100}), rounds=9)
    nearly_full = cost_ms(cluster(1000, 32, 31, {"a": 100}), rounds=9)
    print(f"  100 jobs, every core idle:                 {idle:8.2f}")
    print(f"  100 jobs, one core free per node:          {nearly_full:8.2f}")
    # A full partition "a" with a queue behind it; partition "b" places 10 jobs.
    for depth in (1_000, 100_000):
        state = cluster(1000, 32, 32, {"a": depth, "b": 10}, other_nodes=10)
        print(f"  10 jobs in b, {depth:>7,} queued in full a:    {cost_ms(state):8.2f}")


if __name__ == "__main__":
    main()
