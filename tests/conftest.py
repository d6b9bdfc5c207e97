"""Test session servers: a real nats-server with JetStream and a real PostgreSQL.

``NATS_URL`` / ``DATABASE_URL`` select servers of your own. Otherwise, with a Docker engine, they come
from testcontainers; without one (CI, laptops), from the same wheels ``make up`` uses, on free ports
in folders of their own. Started only when a test asks for them, so unit tests stay fast.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

# Imported now, not by its pytest plugin's summary at the end of the session: on CPython 3.11.7 that
# late import (an ast.parse for assertion rewriting) can fail with "AST constructor recursion depth
# mismatch" after other threads compiled meanwhile (alembic's migrations run in a worker thread), and
# a run of a few test files that all passed then exits with an error.
import hypothesis
import pytest

from conductor_platform import localservers

# Speed is measured by the benchmarks, never asserted: a property test's example that takes longer
# than hypothesis' default 200 ms deadline on a busy machine (parallel workers, CI) is not a failure.
hypothesis.settings.register_profile(
    "conductor", deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)
hypothesis.settings.load_profile("conductor")


@functools.cache
def _docker_available() -> bool:
    if os.environ.get("CONDUCTOR_TEST_DOCKER", "1") == "0" or not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (subprocess.TimeoutExpired, OSError):
        return False


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("NATS_URL"):
        yield url
        return
    if _docker_available():
        from testcontainers.nats import NatsContainer

        with NatsContainer("nats:2.11", jetstream=True) as container:
            yield container.nats_uri()
        return
    server = localservers.start_nats(tmp_path_factory.mktemp("nats"))
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:18", driver=None) as container:
            yield container.get_connection_url()
        return
    folder: Path = tmp_path_factory.mktemp("postgres")
    server = localservers.start_postgres(folder)
    yield server.url
    server.stop()
