"""Metrics served by each service: the port setting, a port in use, the gateway's own /metrics, and
the ports ``conductor up`` gives its services."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError

from conductor.supervisor import SERVICES, metrics_ports
from conductor_gateway.app import create_app
from conductor_platform import metrics
from conductor_platform.settings import CommonSettings


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_metrics_are_off_unless_a_port_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONDUCTOR_METRICS_PORT", raising=False)
    assert CommonSettings().metrics_port is None
    assert metrics.serve("scheduler", None) is None
    monkeypatch.setenv("CONDUCTOR_METRICS_PORT", "9100")
    assert CommonSettings().metrics_port == 9100
    monkeypatch.setenv("CONDUCTOR_METRICS_PORT", "70000")
    with pytest.raises(ValidationError):
        CommonSettings()


def test_metrics_are_served_at_metrics_without_a_redirect() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = metrics.serve("scheduler", port, "127.0.0.1")
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert answer.status == 200 and answer.url.endswith("/metrics")
            assert "process_cpu_seconds_total" in answer.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_a_metrics_port_in_use_is_one_line_and_no_traceback(taken_port: int) -> None:
    with pytest.raises(SystemExit) as stopped:
        metrics.serve("scheduler", taken_port, "127.0.0.1")
    message = str(stopped.value.code)
    assert message == (
        f"conductor scheduler: metrics port {taken_port} on 127.0.0.1 is in use (set CONDUCTOR_METRICS_PORT to another;"
        " under conductor up, CONDUCTOR_SCHEDULER_METRICS_PORT)"
    )


def test_a_service_started_on_a_metrics_port_in_use_says_so_in_one_line(taken_port: int) -> None:
    # NATS is not needed: the port is taken before the service connects to anything.
    env = {"CONDUCTOR_METRICS_PORT": str(taken_port), "NATS_URL": "nats://127.0.0.1:1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "conductor_projector"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"conductor projector: metrics port {taken_port} on 127.0.0.1 is in use (set CONDUCTOR_METRICS_PORT to another;"
        " under conductor up, CONDUCTOR_PROJECTOR_METRICS_PORT)"
    ]


async def test_the_gateway_answers_metrics_on_its_http_port_without_a_redirect() -> None:
    # No lifespan: /metrics needs neither NATS nor PostgreSQL.
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        answer = await client.get("/metrics", follow_redirects=False)
        openmetrics = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        slashed = await client.get("/metrics/", follow_redirects=False)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert "conductor_gateway_submits_total" in answer.text
    assert slashed.status_code == 200 and "conductor_gateway_submits_total" in slashed.text
    assert openmetrics.status_code == 200
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")


def test_conductor_up_gives_each_service_a_port_or_the_one_asked_for() -> None:
    ports = metrics_ports({"CONDUCTOR_SCHEDULER_METRICS_PORT": "9101"})
    assert set(ports) == set(SERVICES) and ports["scheduler"] == 9101
    assert all(1 <= port <= 65535 for port in ports.values())
    for value in ("http", "\u0663", "\u00b2", "0", "65536"):  # Arabic-Indic three would be port 3
        with pytest.raises(ValueError, match="CONDUCTOR_GATEWAY_METRICS_PORT must be a port number"):
            metrics_ports({"CONDUCTOR_GATEWAY_METRICS_PORT": value})


def test_conductor_up_refuses_one_metrics_port_for_two_services_or_for_the_gateway() -> None:
    with pytest.raises(ValueError, match="CONDUCTOR_PROJECTOR_METRICS_PORT=9101 is already CONDUCTOR_SCHEDULER"):
        metrics_ports({"CONDUCTOR_SCHEDULER_METRICS_PORT": "9101", "CONDUCTOR_PROJECTOR_METRICS_PORT": "9101"})
    with pytest.raises(ValueError, match="is already the gateway's HTTP port"):
        metrics_ports({"CONDUCTOR_EXECUTOR_METRICS_PORT": "8000"}, http_port=8000)


def test_chosen_metrics_ports_differ_from_each_other_and_from_the_fixed_ones() -> None:
    for _ in range(300):  # the kernel's own choices repeated often enough to fail this without care
        ports = metrics_ports({"CONDUCTOR_SCHEDULER_METRICS_PORT": "9101"}, http_port=8000)
        assert len(set(ports.values()) | {8000}) == len(SERVICES) + 1
