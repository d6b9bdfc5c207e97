"""A service asked to stop (SIGTERM, as Kubernetes and ``conductor up`` ask) while NATS has never been
reachable ends at once. nats-py tries a first connection for ever: the gateway and the scheduler
awaited it and ignored SIGTERM until they were killed (``conductor up`` waited 30 s on Ctrl-C)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conductor_platform.localservers import free_port

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
