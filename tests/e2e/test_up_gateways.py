"""``conductor up --gateways 2``: two gateway processes on one port (SO_REUSEPORT), both answering,
sharing nothing but NATS and PostgreSQL; one killed, the other goes on answering and the supervisor
starts it again."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.system import System, conductor_up, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with conductor_up(tmp_path_factory.mktemp("up-gateways"), node="gateways", CONDUCTOR_GATEWAYS="2") as system:
        yield system


def gateways(system: System) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(system.process.pid).children():
        try:
            if "conductor_gateway" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.Error:  # gone meanwhile
            continue
    return found


def submits_answered(gateway: psutil.Process) -> float:
    port = gateway.environ()["CONDUCTOR_METRICS_PORT"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = re.search(r"^conductor_gateway_submits_total (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def submit_on_new_connections(system: System, count: int) -> None:
    # A connection each: the kernel spreads connections, not requests, over the listening processes.
    body = {"job": system.spec(), "script": "true"}
    for _ in range(count):
        answer = httpx.post(f"{system.url}/jobs/submit", json=body, timeout=10)
        assert answer.status_code == 200, answer.text


def test_two_gateways_share_the_port_and_both_answer(system: System) -> None:
    running = gateways(system)
    assert len(running) == 2
    ports = {p.environ()["CONDUCTOR_METRICS_PORT"] for p in running}
    assert len(ports) == 2  # each its own metrics
    submit_on_new_connections(system, 40)
    assert all(submits_answered(p) > 0 for p in running)  # 40 connections all on one: 2^-39


def test_a_killed_gateway_is_started_again_and_the_other_answers_meanwhile(system: System) -> None:
    victim, survivor = gateways(system)
    victim.kill()
    victim.wait(10)
    submit_on_new_connections(system, 10)
    wait_for(lambda: len(gateways(system)) == 2, 60, "the killed gateway started again")
    assert survivor.is_running() and victim.pid not in {p.pid for p in gateways(system)}
