"""Bad input on a running system (``conductor up``): nothing a client sends, and nothing that reaches
the log some other way, stops the system. After each bad value a normal job still runs to COMPLETED
and the read models show it."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from conductor_contracts import subjects
from conductor_gateway.http_protocol import MAX_HEAD_BYTES
from conductor_platform.bus import connect
from tests.system import OwnServers, System, system_on_own_servers, wait_for
from tests.unit.scheduling import submitted

pytestmark = pytest.mark.e2e

# Each was accepted by the gateway once and then stopped the read models or a job (issue 5).
BAD_FIELDS: list[tuple[str, Any]] = [
    ("time_limit", "99999999"),
    ("memory_per_node", "2048T"),
    ("memory_per_node", "1" + "0" * 400 + "K"),
    ("standard_output", "out\x00.txt"),
    ("standard_error", "err\x00.txt"),
    ("current_working_directory", "/tmp/a\x00b"),
    ("name", "bad\x00name"),
    ("account", "bad\x00account"),
    ("environment", {"VAR": "a\x00b"}),
    ("name", "\udcff"),
]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, OwnServers]]:
    with system_on_own_servers(tmp_path_factory.mktemp("bad"), "bad") as running:
        yield running


def _caught_up(system: System) -> bool:
    ready = system.http.get("/readyz")
    return ready.status_code == 200 and ready.json()["projector_lag"] == 0


def _a_normal_job_still_completes(system: System) -> None:
    job_id = system.submit("echo fine")
    assert system.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)["state"] == "COMPLETED"
    finished = system.http.post(f"/jobs/cancel/{job_id}")
    assert finished.status_code == 409, finished.text
    wait_for(lambda: _caught_up(system), 60, "read models caught up with the log")


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_FIELDS)])
def test_a_bad_value_is_a_4xx_naming_the_field_and_breaks_nothing(
    running: tuple[System, OwnServers], field: str, value: Any
) -> None:
    system, _ = running
    spec = {"name": "bad", "account": "tester", "current_working_directory": str(system.work), field: value}
    # Sent as JSON text: a lone surrogate travels as its escape, as any client can send it.
    answer = system.http.post(
        "/jobs/submit",
        content=json.dumps({"job": spec, "script": "true"}),
        headers={"content-type": "application/json"},
    )
    assert 400 <= answer.status_code < 500, answer.text
    assert field in answer.text, answer.text
    _a_normal_job_still_completes(system)


def test_events_that_bypassed_the_gateway_are_skipped_and_the_system_goes_on(
    running: tuple[System, OwnServers],
) -> None:
    """Whatever the gateway lets through in some later version, or another writer puts in the log:
    the consumers record it, skip it, and keep going."""
    system, servers = running
    work = str(system.work)

    async def publish() -> list[int]:
        bus = await connect(servers.nats.url, name="e2e-poison")
        try:
            ids = [
                await bus.publish(submitted().model_copy(update={"working_directory": work, "time_limit_s": 99999999})),
                await bus.publish(submitted().model_copy(update={"working_directory": work + "/a\x00b"})),
                await bus.publish(submitted().model_copy(update={"working_directory": work, "memory_mb": 2**40})),
                await bus.publish(
                    submitted().model_copy(update={"working_directory": work, "environment": {"V": "a\x00b"}})
                ),
            ]
            await bus.js.publish(subjects.SUBMITTED, b"\xff not an event", stream=subjects.STREAM)
            await bus.js.publish(subjects.placements_for("bad"), b"{}", stream=subjects.STREAM)
            await bus.js.publish(subjects.cancel_of(1), b"[", stream=subjects.STREAM)
            return ids
        finally:
            await bus.close()

    jobs = asyncio.run(publish())
    _a_normal_job_still_completes(system)
    # Each decodable job is visible in the read models, in a state that says what became of it.
    long_limit, nul_cwd, huge, nul_env = (str(j) for j in jobs)
    assert system.wait_state(long_limit, "COMPLETED", "FAILED")["state"] == "COMPLETED"
    assert system.wait_state(huge, "PENDING")["reason"] == "ResourcesNeverSatisfiable"
    for job_id in (nul_cwd, nul_env):  # the executor cannot start them: FAILED, saying why
        job = system.wait_state(job_id, "FAILED", timeout=60)
        assert job["message"], job


def test_a_client_that_sends_an_oversized_body_whole_reads_its_413(running: tuple[System, OwnServers]) -> None:
    """urllib sends the whole body before it reads the answer: answering early and closing reset it."""
    system, _ = running
    oversized = json.dumps({"job": {}, "script": "x" * 5_000_000}).encode()
    request = urllib.request.Request(
        f"{system.url}/jobs/submit", data=oversized, headers={"Content-Type": "application/json"}, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413
    assert "over the limit" in json.loads(refused.value.read())["detail"]


def test_a_request_head_over_the_limit_is_a_431_and_each_head_is_counted_on_its_own(
    running: tuple[System, OwnServers],
) -> None:
    """A header that never ends was kept whole in the gateway's memory (300 MB sent: +460 MB)."""
    system, _ = running
    where = urllib.parse.urlsplit(system.url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as client:
        client.sendall(b"GET /jobs HTTP/1.1\r\nHost: x\r\nX-Big: ")
        time.sleep(0.3)  # the read the head begins in is not counted (http_protocol.py)
        # Just over the limit and then nothing more, unless the first read took some of it: all of it
        # read, so the answer is not lost to a reset.
        client.sendall(b"a" * (MAX_HEAD_BYTES + 1))
        while not select.select([client], [], [], 0.5)[0]:
            client.sendall(b"a")
        answer = b""
        while chunk := client.recv(65536):  # a timeout here: the gateway waited for the header's end
            answer += chunk
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert "over the limit" in json.loads(body)["detail"]
    # Heads within the limit on one kept-alive connection, more than the limit together.
    for _ in range(3):
        listed = system.http.get("/jobs", headers={"X-Big": "a" * (MAX_HEAD_BYTES // 2)})
        assert listed.status_code == 200, listed.text
    _a_normal_job_still_completes(system)


def test_a_job_cannot_name_the_systems_data_as_its_output(running: tuple[System, OwnServers]) -> None:
    """``conductor up`` keeps NATS's log and PostgreSQL's data in its var folder, beside the
    executor's: a job that named them as its output truncated them (review of 2026-12-02)."""
    system, _ = running
    kept = system.var / "kept.txt"  # stands for a message block of the log, a table's file
    kept.write_text("the system's\n")
    job_id = system.submit("echo written-by-job", standard_output=str(kept))
    job = system.wait_state(job_id, "COMPLETED", "FAILED", timeout=60)
    assert job["state"] == "FAILED" and "a folder this node protects" in job["message"], job
    assert kept.read_text() == "the system's\n"
    _a_normal_job_still_completes(system)
