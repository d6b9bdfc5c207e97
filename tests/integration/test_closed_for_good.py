"""A NATS connection nats-py closed for good ends every service, for its supervisor to start it again.

The server closes it the way it does in production: the service's credentials are revoked by a
configuration reload (SIGHUP) of a nats-server of the test's own, which answers -ERR 'Authorization
Violation'; nats-py's reconnect is refused the same way, and it closes the connection for good. Before,
the scheduler, the executor and the gateway retried on that connection for ever (the scheduler
reconnected by itself, and kept its lease and heartbeat watch on the dead one)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import events as ev
from conductor_executor import supervision as sv
from conductor_gateway import app as gateway_app
from conductor_gateway.settings import GatewaySettings
from conductor_platform import closed
from conductor_platform.bus import Bus, connect
from conductor_platform.localservers import free_port
from tests.integration import served
from tests.integration.helpers import eventually
from tests.integration.served import served_gateway
from tests.integration.test_executor import _has
from tests.system import AuthorizedNats, job_spec
from tests.unit.scheduling import submitted

NODE = "closed-node"


@pytest.fixture
async def authorized(tmp_path: Path) -> AsyncIterator[tuple[AuthorizedNats, Bus]]:
    nats = AuthorizedNats(tmp_path / "nats")
    bus = await connect(nats.url("tests", "t"), name="tests")
    try:
        yield nats, bus
    finally:
        await bus.close()
        nats.server.stop()


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def lines(self, words: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and words in str(record.get("msg", "")):
                    found.append(record)
        return found


@contextlib.contextmanager
def service(name: str, folder: Path, env: dict[str, str], *args: str) -> Iterator[Service]:
    """``python -m conductor_<name>`` with only ``env`` of CONDUCTOR_*, its stderr in a file."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONDUCTOR_")}
    base = {k: v for k, v in base.items() if k not in ("NATS_URL", "DATABASE_URL")}
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        "CONDUCTOR_METRICS_PORT": str(free_port()),
        "CONDUCTOR_RETRY_FIRST_S": "0.05",
        "CONDUCTOR_RETRY_MAX_S": "0.2",
        "CONDUCTOR_ARCHIVE_DIR": str(folder / "archive"),
    } | env
    stderr = folder / f"{name}.stderr"
    with open(stderr, "wb") as err:
        process = subprocess.Popen([sys.executable, "-m", f"conductor_{name}", *args], env=base | env, stderr=err)
    try:
        yield Service(name, process, stderr)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def _until(probe: Callable[[], bool], what: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    async def checked() -> bool:
        assert process.poll() is None, f"the service exited with {process.returncode} before {what}"
        return probe()

    await eventually(checked, timeout, what)


async def _ended(svc: Service, timeout: float = 30) -> int:
    """The service's exit code, once it has ended by itself."""
    deadline = time.monotonic() + timeout
    while (code := svc.process.poll()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{svc.name} still runs {timeout}s after its connection was closed for good")
        await asyncio.sleep(0.1)
    return code


def _ended_as_it_should(svc: Service, code: int) -> None:
    assert code == closed.EXIT_CODE, svc.log()[-3000:]
    [said] = svc.lines("closed for good")
    assert said["level"] == "ERROR" and "Authorization" in said["msg"], said
    assert "Traceback" not in svc.log(), svc.log()[-3000:]


def _settings_env(nats: AuthorizedNats, database_url: str) -> dict[str, str]:
    return {"NATS_URL": nats.service_url, "DATABASE_URL": database_url}


async def test_the_scheduler_ends(authorized: tuple[AuthorizedNats, Bus], tmp_path: Path) -> None:
    nats, _ = authorized
    with service("scheduler", tmp_path / "scheduler", {"NATS_URL": nats.service_url}) as svc:
        await _until(lambda: bool(svc.lines("following the log")), "following the log", svc.process)
        nats.revoke()
        _ended_as_it_should(svc, await _ended(svc))


async def test_the_projector_ends(
    authorized: tuple[AuthorizedNats, Bus], tmp_path: Path, engine: AsyncEngine, database_url: str
) -> None:
    nats, _ = authorized
    with service("projector", tmp_path / "projector", _settings_env(nats, database_url)) as svc:
        await _until(lambda: bool(svc.lines("projecting")), "projecting", svc.process)
        nats.revoke()
        _ended_as_it_should(svc, await _ended(svc))


async def test_the_executor_ends_and_leaves_its_jobs_to_the_next_one(
    authorized: tuple[AuthorizedNats, Bus], tmp_path: Path
) -> None:
    """Even with CONDUCTOR_STOP_JOBS_ON_EXIT (as ``conductor up`` runs it): this is no stop, and its
    jobs are left running for the executor started next to take over, as after any death."""
    nats, bus = authorized
    state = tmp_path / "executor"
    env = {
        "NATS_URL": nats.service_url,
        "CONDUCTOR_STATE_DIR": str(state),
        "CONDUCTOR_STOP_JOBS_ON_EXIT": "1",
        "CONDUCTOR_KILL_GRACE_S": "1",
    }
    args = ("--node", NODE, "--cpus", "1", "--memory", "1G")
    try:
        with service("executor", tmp_path / "run", env, *args) as svc:
            await eventually(functools.partial(_has, bus, ev.NodeRegistered), what="node registered")
            job = submitted().model_copy(update={"working_directory": str(tmp_path), "script": "sleep 60\n"})
            job_id = await bus.publish(job)
            await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(0,), memory_mb=100), by_scheduler=True)
            await eventually(functools.partial(_has, bus, ev.JobStarted, job_id), what="job started")
            nats.revoke()
            _ended_as_it_should(svc, await _ended(svc))
            folder = state / NODE / "jobs" / sv.folder_name(job_id, 0)
            record = sv.read_process(folder)
            assert record is not None
            supervisor = psutil.Process(record.pid)
            # Still running, and not asked to stop: the next executor finds it and takes it over.
            assert supervisor.is_running() and supervisor.status() != psutil.STATUS_ZOMBIE
            assert sv.read_kill(folder) == frozenset()
    finally:  # the job, under its supervisor (in a group of its own)
        for proc in psutil.process_iter(["cmdline"]):
            if str(state) in " ".join(proc.info.get("cmdline") or []):
                with contextlib.suppress(ProcessLookupError, PermissionError, psutil.Error):
                    os.killpg(os.getpgid(proc.pid), signal.SIGKILL)


async def test_the_gateway_answers_503_then_ends(
    authorized: tuple[AuthorizedNats, Bus], tmp_path: Path, database_url: str
) -> None:
    nats, _ = authorized
    port = free_port()
    env = _settings_env(nats, database_url) | {"CONDUCTOR_PORT": str(port), "CONDUCTOR_HOST": "127.0.0.1"}
    url = f"http://127.0.0.1:{port}"
    with service("gateway", tmp_path / "gateway", env) as svc:

        def healthy() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            return False

        await _until(healthy, "the gateway answering", svc.process)
        nats.revoke()
        await _until(lambda: not nats.connections("conductor-gateway"), "its connection closed", svc.process)
        body = {"job": job_spec(tmp_path, name="closed"), "script": "true\n"}
        answers = []
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            while svc.process.poll() is None and time.monotonic() < deadline:
                try:
                    answer = await client.post("/jobs/submit", json=body)
                except httpx.TransportError:  # it stopped listening: it is on its way out
                    break
                answers.append((answer.status_code, answer.json()))
        for status, payload in answers:
            assert status == 503 and "detail" in payload, answers
        _ended_as_it_should(svc, await _ended(svc))


async def test_a_submit_on_a_connection_closed_for_good_is_a_503_that_says_so(
    bus: Bus, nats_url: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the gateway's own process: the answer, and the call that makes ``__main__`` stop serving."""
    made: list[Bus] = []

    async def connecting(*args: Any, **kwargs: Any) -> Bus:
        made.append(await connect(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(gateway_app, "connect", connecting)
    lost: list[closed.ConnectionClosedForGood] = []
    settings = GatewaySettings(nats_url=nats_url, database_url=database_url)
    monkeypatch.setattr(served, "create_app", functools.partial(gateway_app.create_app, on_closed_for_good=lost.append))
    async with served_gateway(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        body = {"job": job_spec(tmp_path, name="closed"), "script": "true\n"}
        assert (await client.post("/jobs/submit", json=body)).status_code == 200
        await made[0].nc.close()  # what nats-py does on the server's -ERR
        answer = await client.post("/jobs/submit", json=body)
        assert answer.status_code == 503
        assert "restarting" in answer.json()["detail"]
        await eventually(lambda: _true(bool(lost)), what="on_closed_for_good called")
        assert len(lost) == 1


async def _true(value: bool) -> bool:
    return value
