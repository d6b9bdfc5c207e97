"""The cluster view the scheduler exports, from its fold."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from conductor_contracts import events as ev
from conductor_scheduler import gauges
from conductor_scheduler.gauges import Cluster, Snapshot
from conductor_scheduler.state import ClusterState
from tests.unit.scheduling import Log, node, submitted


def test_the_cluster_view_from_the_fold() -> None:
    log = Log()
    log.append(node("a", 4, memory_mb=1000))
    log.append(node("b", 2, memory_mb=500, partitions=("gpu",)))
    log.append(submitted(cpus=3, memory_mb=100))
    log.append(submitted(cpus=3, memory_mb=100))  # waits for the first
    log.append(submitted(partition="nowhere"))
    log.schedule()
    log.append(ev.NodeDrainRequested(node="b"))
    cluster = Cluster(every_s=0)
    cluster.refresh(log.state)
    registry = CollectorRegistry()
    registry.register(cluster)
    text = generate_latest(registry).decode()
    assert 'conductor_jobs{partition="default",state="RUNNING"} 1.0' in text
    assert 'conductor_jobs{partition="default",state="PENDING"} 1.0' in text
    assert 'conductor_jobs_pending{partition="default",reason="Resources"} 1.0' in text
    assert 'conductor_jobs_pending{partition="nowhere",reason="PartitionDown"} 1.0' in text
    assert 'conductor_nodes{state="up"} 1.0' in text and 'conductor_nodes{state="drained"} 1.0' in text
    assert 'conductor_node_cpus_allocated{node="a"} 3.0' in text
    assert 'conductor_node_memory_allocated_bytes{node="a"} 1.048576e+08' in text
    assert 'conductor_partition_cpus{partition="gpu"} 2.0' in text
    assert 'conductor_pending_oldest_age_seconds{partition="default"}' in text


def test_a_costly_snapshot_is_taken_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a million jobs pending a snapshot takes a good part of a second: the loop must not spend
    most of its time on gauges."""
    taken = []

    def slow(state: ClusterState) -> Snapshot:
        taken.append(state)
        time.sleep(0.02)
        return Snapshot()

    monkeypatch.setattr(gauges, "snapshot", slow)
    cluster = Cluster(every_s=0, share=0.05)
    cluster.refresh(ClusterState())
    cluster.refresh(ClusterState())  # due again only after 20 times the first one's cost
    assert len(taken) == 1 and cluster.wait_s >= 0.02 / 0.05
