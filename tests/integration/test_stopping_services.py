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
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conductor_platform.localservers import free_port
from tests.system import connected_to

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("module", ["conductor_gateway", "conductor_scheduler", "conductor_projector"])
def test_sigterm_while_nats_was_never_reached_ends_the_service(module: str, database_url: str, tmp_path: Path) -> None:
    env = os.environ | {
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",  # nothing listens there
        "DATABASE_URL": database_url,
        "CONDUCTOR_PORT": str(free_port()),
        "CONDUCTOR_LOG_LEVEL": "INFO",
    }
    log = tmp_path / "service.log"
    with log.open("w") as out:
        service = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        # Up to the point where it waits for NATS: nats-py's error callback logs each refused try.
        while "Connect call failed" not in log.read_text() and "refused" not in log.read_text():
            assert service.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        service.send_signal(signal.SIGTERM)
        service.wait(10)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
            pytest.fail(f"{module} still ran 10 s after SIGTERM:\n{log.read_text()[-3000:]}")
    assert service.returncode in (0, -signal.SIGTERM), log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


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
    env = os.environ | {
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "DATABASE_URL": f"postgresql://conductor@127.0.0.1:{silent_postgres}/conductor",
    }
    log = tmp_path / "projector.log"
    with log.open("w") as out:
        projector = subprocess.Popen([sys.executable, "-m", "conductor_projector"], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while not connected_to(projector.pid, silent_postgres):
            assert projector.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        projector.send_signal(signal.SIGTERM)
        projector.wait(10)
    finally:
        if projector.poll() is None:
            projector.kill()
            projector.wait()
            pytest.fail(f"the projector still ran 10 s after SIGTERM:\n{log.read_text()[-3000:]}")
    assert projector.returncode in (0, -signal.SIGTERM), log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


def test_ctrl_c_stops_a_healthy_gateway_without_a_traceback(nats_url: str, database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {"NATS_URL": nats_url, "DATABASE_URL": database_url, "CONDUCTOR_PORT": str(port)}
    log = tmp_path / "gateway.log"
    with log.open("w") as out:
        gateway = subprocess.Popen([sys.executable, "-m", "conductor_gateway"], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert gateway.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/nodes", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        gateway.send_signal(signal.SIGINT)
        gateway.wait(20)
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
    assert gateway.returncode == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text() and "KeyboardInterrupt" not in log.read_text()
