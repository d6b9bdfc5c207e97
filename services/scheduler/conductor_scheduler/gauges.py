"""The cluster as the scheduler's fold knows it, as Prometheus gauges (Slurm's and its exporters'
view: jobs by state and partition, pending by reason, the oldest pending job's age, nodes by state,
CPUs and memory per node and partition).

Gauges of the fold, not counters: a restarted scheduler that replays the log exports the same
values. The loop takes a snapshot at most once a second (``Cluster.refresh``), less often when it is
large; a scrape reads the last snapshot from the metrics thread and never touches the state the loop
is changing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conductor_scheduler.state import ClusterState

MB = 1024 * 1024


@dataclass(frozen=True)
class Snapshot:
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)  # (state, partition)
    pending: dict[tuple[str, str], int] = field(default_factory=dict)  # (partition, reason)
    oldest: dict[str, float] = field(default_factory=dict)  # partition -> submit time
    nodes: dict[str, int] = field(default_factory=dict)  # state
    node_cpus: dict[str, tuple[int, int]] = field(default_factory=dict)  # total, allocated
    node_memory: dict[str, tuple[int, int]] = field(default_factory=dict)
    partition_cpus: dict[str, tuple[int, int]] = field(default_factory=dict)


def _node_state(lost: bool, draining: str | None, allocated: int) -> str:
    if lost:
        return "down"
    if draining is not None:
        return "draining" if allocated else "drained"
    return "up"


def snapshot(state: ClusterState) -> Snapshot:
    jobs: Counter[tuple[str, str]] = Counter()
    pending: Counter[tuple[str, str]] = Counter()
    oldest: dict[str, float] = {}
    for job in state.pending.values():
        jobs["PENDING", job.partition] += 1
        pending[job.partition, state.reasons.get(job.job_id, "None")] += 1
        if job.partition not in oldest and job.submitted_at:
            oldest[job.partition] = job.submitted_at  # submit order: the first is the oldest
    for allocation in state.running.values():
        jobs["RUNNING", allocation.job.partition] += 1
    nodes: Counter[str] = Counter()
    node_cpus, node_memory = {}, {}
    partition_cpus: dict[str, tuple[int, int]] = {}
    for n in state.nodes.values():
        nodes[_node_state(n.lost or n.replaced, n.draining, n.alloc_cpus)] += 1
        node_cpus[n.name] = (n.cpus, n.alloc_cpus)
        node_memory[n.name] = (n.memory_mb, n.memory_mb - n.free_memory_mb)
        for p in n.partitions:
            total, used = partition_cpus.get(p, (0, 0))
            partition_cpus[p] = (total + n.cpus, used + n.alloc_cpus)
    return Snapshot(dict(jobs), dict(pending), oldest, dict(nodes), node_cpus, node_memory, partition_cpus)


class Cluster(Collector):
    def __init__(self, every_s: float = 1.0, share: float = 0.05) -> None:
        self.every_s = every_s
        # A snapshot reads every job not ended: with a million pending that takes a good part of a
        # second, so the next waits until the last one's cost is at most ``share`` of the loop's time.
        self.share = share
        self.taken_at = 0.0
        self.wait_s = every_s
        self.last = Snapshot()

    def refresh(self, state: ClusterState) -> None:
        now = time.monotonic()
        if now - self.taken_at >= self.wait_s:
            self.last = snapshot(state)
            self.taken_at = time.monotonic()
            self.wait_s = max(self.every_s, (self.taken_at - now) / self.share)

    def collect(self) -> Iterator[Metric]:
        s = self.last
        now = time.time()
        yield _family("conductor_jobs", "Jobs not ended, by state and partition", ["state", "partition"], s.jobs)
        yield _family(
            "conductor_jobs_pending", "Pending jobs by partition and reason", ["partition", "reason"], s.pending
        )
        ages = {(p,): max(0.0, now - at) for p, at in s.oldest.items()}
        yield _family("conductor_pending_oldest_age_seconds", "Oldest pending job's age", ["partition"], ages)
        yield _family("conductor_nodes", "Nodes by state: up, draining, drained, down", ["state"], s.nodes)
        cpus, memory, partitions = s.node_cpus, s.node_memory, s.partition_cpus
        yield _family("conductor_node_cpus", "CPUs of a node", ["node"], {(n,): v[0] for n, v in cpus.items()})
        yield _family(
            "conductor_node_cpus_allocated",
            "CPUs of a node given to jobs",
            ["node"],
            {(n,): v[1] for n, v in cpus.items()},
        )
        yield _family(
            "conductor_node_memory_bytes", "Memory of a node", ["node"], {(n,): v[0] * MB for n, v in memory.items()}
        )
        yield _family(
            "conductor_node_memory_allocated_bytes",
            "Memory of a node given to jobs",
            ["node"],
            {(n,): v[1] * MB for n, v in memory.items()},
        )
        yield _family(
            "conductor_partition_cpus",
            "CPUs of a partition",
            ["partition"],
            {(p,): v[0] for p, v in partitions.items()},
        )
        yield _family(
            "conductor_partition_cpus_allocated",
            "CPUs of a partition given to jobs",
            ["partition"],
            {(p,): v[1] for p, v in partitions.items()},
        )


def _family(name: str, help_: str, labels: list[str], values: Mapping[Any, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family
