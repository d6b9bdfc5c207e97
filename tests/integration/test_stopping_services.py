"""A service asked to stop (SIGTERM, as Kubernetes and ``conductor up`` ask; SIGINT, Ctrl-C) ends at
once and quietly, also while it still waits for a server:
- nats-py tries a first connection for ever: the gateway, the scheduler and the projector awaited it
  and ignored SIGTERM until they were killed (``conductor up`` waited 30 s on Ctrl-C);
- the projector's migration ran in asyncio's thread pool, which the process waits for at its end: a
  PostgreSQL that never answers held a stopped projector for asyncpg's 60 s connect timeout;
- uvicorn hands a captured SIGINT back to Python after its graceful stop: a KeyboardInterrupt
  traceback ended every Ctrl-C of the gateway."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conductor_platform.localservers import free_port
from conductor_projector import migrate
from tests.system import connected_to

pytestmark = pytest.mark.integration


def _stopped(module: str, env: dict[str, str], log: Path, ready: Callable[[int], bool], sig: signal.Signals) -> int:
    """Runs ``python -m module`` until ``ready(pid)``, sends ``sig``: its exit code, within 10 s."""
    with log.open("w") as out:
        service = subprocess.Popen([sys.executable, "-m", module], env=os.environ | env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while not ready(service.pid):
            assert service.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        service.send_signal(sig)
        service.wait(10)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
            pytest.fail(f"{module} still ran 10 s after {sig.name}:\n{log.read_text()[-3000:]}")
    assert "Traceback" not in log.read_text() and "KeyboardInterrupt" not in log.read_text(), log.read_text()
    return service.returncode


@pytest.mark.parametrize("module", ["conductor_gateway", "conductor_scheduler", "conductor_projector"])
def test_sigterm_while_nats_was_never_reached_ends_the_service(module: str, database_url: str, tmp_path: Path) -> None:
    env = {
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",  # nothing listens there
        "DATABASE_URL": database_url,
        "CONDUCTOR_PORT": str(free_port()),
        "CONDUCTOR_LOG_LEVEL": "INFO",
    }
    log = tmp_path / "service.log"

    def waiting_for_nats(_: int) -> bool:  # nats-py's error callback logs each refused try
        return "Connect call failed" in log.read_text() or "refused" in log.read_text()

    assert _stopped(module, env, log, waiting_for_nats, signal.SIGTERM) in (0, -signal.SIGTERM)


@pytest.fixture
def silent_postgres() -> Iterator[int]:
    """A port that takes connections (the kernel's backlog) and never answers on them."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def test_sigterm_while_the_migration_waits_on_postgresql_ends_the_projector(
    silent_postgres: int, tmp_path: Path
) -> None:
    env = {
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "DATABASE_URL": f"postgresql://conductor@127.0.0.1:{silent_postgres}/conductor",
    }
    log = tmp_path / "projector.log"
    code = _stopped("conductor_projector", env, log, lambda pid: connected_to(pid, silent_postgres), signal.SIGTERM)
    assert code in (0, -signal.SIGTERM)


def test_ctrl_c_stops_a_healthy_gateway_without_a_traceback(nats_url: str, database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {"NATS_URL": nats_url, "DATABASE_URL": database_url, "CONDUCTOR_PORT": str(port)}
    migrate.upgrade(database_url)  # /nodes answers 200 once its table is there, whatever ran before

    def answering(_: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/nodes", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    assert _stopped("conductor_gateway", env, tmp_path / "gateway.log", answering, signal.SIGINT) == 0


@pytest.mark.parametrize(
    "module", ["conductor_gateway", "conductor_scheduler", "conductor_projector", "conductor_executor"]
)
def test_ctrl_c_while_a_service_still_imports_ends_it_quietly(module: str, tmp_path: Path) -> None:
    # Ctrl-C reaches every child of `conductor up` (one process group): pressed in the first second,
    # each service printed a KeyboardInterrupt traceback from wherever its imports were.
    env = os.environ | {
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",  # nothing listens there
        "CONDUCTOR_PORT": str(free_port()),
        "CONDUCTOR_STATE_DIR": str(tmp_path / "state"),
    }
    for delay in (0.15, 0.3, 0.45):
        service = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        time.sleep(delay)
        service.send_signal(signal.SIGINT)
        try:
            # What is asserted is the output, not how fast: on a machine running two test suites at
            # once the executor once took longer than 10 s to stop.
            output, _ = service.communicate(timeout=60)
        finally:
            service.kill()
        assert "Traceback" not in output and "KeyboardInterrupt" not in output, f"after {delay} s:\n{output}"
