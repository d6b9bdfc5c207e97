"""Every service's metrics under ``conductor up``: each on the port it was given, with the counters
of what that process did, and a restarted service back on the same port without replayed counts."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.system import System, conductor_up_with_metrics, metrics_ports, wait_for

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return metrics_ports()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int]) -> Iterator[System]:
    with conductor_up_with_metrics(tmp_path_factory.mktemp("metrics"), "metrics", ports) as system:
        yield system


def scrape(url: str) -> Samples | None:
    """The samples at ``url`` by name and labels; None while nothing answers there (restarting)."""
    try:
        answer = httpx.get(url, timeout=10, follow_redirects=False)
    except httpx.HTTPError:
        return None
    assert answer.status_code == 200, (url, answer.status_code, answer.headers.get("location"))
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def metrics_of(ports: dict[str, int], service: str) -> Samples | None:
    return scrape(f"http://127.0.0.1:{ports[service]}/metrics")


def test_each_service_counts_what_it_did_on_its_own_port(system: System, ports: dict[str, int]) -> None:
    job_id = system.submit("echo counted")
    assert system.wait_state(job_id, "COMPLETED")["state"] == "COMPLETED"

    def counted(service: str, name: str, **labels: str) -> Samples | None:
        # A counter moves just after what it counts is done, so it may lag the job's state a little.
        samples = metrics_of(ports, service)
        found = None if samples is None else value(samples, name, **labels)
        return samples if found is not None and found >= 1 else None

    def placed_and_seen() -> Samples | None:
        # The cluster's gauges are a snapshot the scheduler's loop takes at most once a second
        # (gauges.Cluster.refresh): they may show the node a second after the placement is counted.
        samples = counted("scheduler", "conductor_scheduler_placements_total")
        return samples if samples is not None and value(samples, "conductor_nodes", state="up") is not None else None

    scheduler = wait_for(placed_and_seen, what="a placement, and the node in the cluster's gauges")
    executor = wait_for(
        lambda: counted("executor", "conductor_executor_jobs_finished_total", state="COMPLETED"), what="a job finished"
    )
    projector = wait_for(lambda: counted("projector", "conductor_projector_events_applied_total"), what="events")
    gateway = wait_for(lambda: counted("gateway", "conductor_gateway_submits_total"), what="a submit")

    assert value(scheduler, "conductor_scheduler_fencing_rejections_total") == 0
    # The cluster as the scheduler's fold knows it: gauges, the same after a replay.
    assert value(scheduler, "conductor_nodes", state="up") == 1
    assert value(scheduler, "conductor_node_cpus", node="metrics") == 2
    assert value(scheduler, "conductor_partition_cpus", partition="default") == 2
    assert (value(scheduler, "conductor_submit_to_placed_seconds_count") or 0) >= 1
    assert value(scheduler, "conductor_scheduler_leader") == 1
    assert value(scheduler, "conductor_scheduler_lease_changes_total", change="acquired") == 1
    projected = wait_for(lambda: counted("projector", "conductor_start_to_end_seconds_count"), what="a job's run")
    assert (value(projected, "conductor_submit_to_start_seconds_count") or 0) >= 1
    assert (value(projected, "conductor_placed_to_start_seconds_count") or 0) >= 1
    assert value(projected, "conductor_projector_lag_events") is not None
    assert (value(projected, "conductor_projector_batch_events_count") or 0) >= 1
    assert value(projected, "conductor_nats_reconnects_total") == 0
    submits = wait_for(lambda: metrics_of(ports, "gateway"), what="the gateway's metrics")
    labels = {"route": "/jobs/submit", "method": "POST", "status": "200"}
    assert (value(submits, "conductor_http_requests_total", **labels) or 0) >= 1
    assert (
        value(submits, "conductor_http_request_duration_seconds_count", route="/jobs/submit", method="POST") or 0
    ) >= 1
    assert value(scheduler, "conductor_scheduler_skipped_events_total") == 0
    assert value(projector, "conductor_projector_dead_letters_total") == 0
    assert value(projector, "conductor_projector_retries_total") is not None
    assert value(gateway, "conductor_gateway_cancels_total") == 0
    # Each process serves its own counters, not the others'.
    assert value(executor, "conductor_scheduler_placements_total") is None
    assert value(gateway, "conductor_projector_events_applied_total") is None

    # The gateway also answers on its HTTP port, directly.
    on_http = scrape(f"{system.url}/metrics")
    assert on_http is not None and (value(on_http, "conductor_gateway_submits_total") or 0) >= 1


def test_a_restarted_scheduler_keeps_its_port_and_does_not_count_replayed_placements(
    system: System, ports: dict[str, int]
) -> None:
    job_id = system.submit("echo placed-before-the-restart")
    assert system.wait_state(job_id, "COMPLETED")["state"] == "COMPLETED"
    before = wait_for(lambda: metrics_of(ports, "scheduler"), what="the scheduler's metrics")
    assert (value(before, "conductor_scheduler_placements_total") or 0) >= 1
    [scheduler] = [
        p for p in psutil.Process(system.process.pid).children() if "conductor_scheduler" in " ".join(p.cmdline())
    ]
    scheduler.kill()

    def restarted() -> Samples | None:
        samples = metrics_of(ports, "scheduler")
        started = None if samples is None else value(samples, "process_start_time_seconds")
        return samples if started is not None and started != value(before, "process_start_time_seconds") else None

    after = wait_for(restarted, 90, "the scheduler back on its metrics port")
    # It replays the placement from the log; only placements it publishes itself are counted.
    assert value(after, "conductor_scheduler_placements_total") == 0
