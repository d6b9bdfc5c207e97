"""``conductor up`` as a user starts it, in a subprocess, and a small HTTP client for it (e2e, chaos)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

from conductor.supervisor import SERVICES
from conductor_platform.localservers import LocalServer, free_port, start_nats, start_postgres

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float = 60, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.1)


def job_spec(work: Path, **job: Any) -> dict[str, Any]:
    """A small job's ``job`` object working in ``work``, as a submit takes it; ``job`` overrides fields."""
    return {
        "name": "e2e",
        "account": "tester",
        "partition": "default",
        "ntasks_per_node": 1,
        "cpus_per_task": 1,
        "memory_per_node": "100M",
        "time_limit": "5",
        "current_working_directory": str(work),
        "standard_output": "out-%j.txt",
        "standard_error": "err-%j.txt",
    } | job


class System:
    def __init__(self, process: subprocess.Popen[bytes], url: str, var: Path, work: Path) -> None:
        self.process, self.url, self.var, self.work = process, url, var, work
        self.http = httpx.Client(base_url=url, timeout=10)

    def spec(self, **job: Any) -> dict[str, Any]:
        """A small job's ``job`` object, working in this system's folder; ``job`` overrides fields."""
        return job_spec(self.work, **job)

    def submit(self, script: str, **job: Any) -> str:
        answer = self.http.post("/jobs/submit", json={"job": self.spec(**job), "script": script})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.http.get(f"/jobs/query/{job_id}").json())

    def wait_state(self, job_id: str, *states: str, timeout: float = 60) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["state"] in states else None

        return wait_for(probe, timeout, f"job {job_id} in {states}")

    def has_node(self) -> bool:
        try:
            return bool(self.http.get("/nodes").json()["nodes"])
        except (httpx.HTTPError, ValueError, KeyError):
            return self.process.poll() is not None  # stop waiting if it died


@contextmanager
def conductor_up(root: Path, node: str, memory: str = "2G", **env: str) -> Iterator[System]:
    """Runs ``conductor up`` on two CPUs under ``root``; ``env`` adds variables (``NATS_URL`` and
    ``DATABASE_URL`` select servers; without them it starts its own, as ``make up`` does)."""
    var, work = root / "var", root / "work"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    argv = [sys.executable, "-m", "conductor", "up", "--var-dir", str(var), "--port", str(port)]
    argv += ["--node", node, "--cpus", "2", "--memory", memory]
    process = subprocess.Popen(argv, env=base | {"CONDUCTOR_KILL_GRACE_S": "2"} | env)
    system = System(process, f"http://127.0.0.1:{port}", var, work)
    try:
        wait_for(system.has_node, 120, "the system up with its node registered")
        assert process.poll() is None, "conductor up exited"
        yield system
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(90)


def connected_to(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a TCP connection to ``port`` (on any host)."""
    try:
        return any(c.raddr and c.raddr.port == port for c in psutil.Process(pid).net_connections("tcp"))
    except psutil.Error:
        return False


def metrics_ports() -> dict[str, int]:
    """A free metrics port per service, for ``conductor up``'s ``CONDUCTOR_<SERVICE>_METRICS_PORT``."""
    return {service: free_port() for service in SERVICES}


@contextmanager
def conductor_up_with_metrics(root: Path, node: str, ports: dict[str, int]) -> Iterator[System]:
    """``conductor up`` with each service's metrics on the given port."""
    env = {f"CONDUCTOR_{service.upper()}_METRICS_PORT": str(port) for service, port in ports.items()}
    with conductor_up(root, node=node, **env) as system:
        yield system


class OwnServers:
    """A nats-server and a PostgreSQL for one test, on fixed ports and folders so either can be
    killed and started again where it was (a log or a projector position left by other tests would
    not match a fresh system)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nats_port, self.pg_port = free_port(), free_port()
        self.nats = start_nats(root / "nats", self.nats_port)
        self.postgres = start_postgres(root / "pg", self.pg_port)

    @property
    def env(self) -> dict[str, str]:
        return {"NATS_URL": self.nats.url, "DATABASE_URL": self.postgres.url}

    def kill(self, server: LocalServer) -> None:
        server.process.kill()
        server.process.wait()

    def restart_nats(self) -> None:
        self.nats = start_nats(self.root / "nats", self.nats_port)

    def restart_postgres(self) -> None:
        self.postgres = start_postgres(self.root / "pg", self.pg_port)

    def stop(self) -> None:
        self.postgres.stop()
        self.nats.stop()


@contextmanager
def system_on_own_servers(root: Path, node: str) -> Iterator[tuple[System, OwnServers]]:
    servers = OwnServers(root)
    try:
        with conductor_up(root, node, memory="1G", **servers.env) as system:
            yield system, servers
    finally:
        servers.stop()


# The services connect as ``svc``, the test as ``tests``.
_USERS = "authorization {{ users = [ {{user: svc, password: {svc}}}, {{user: tests, password: t}} ] }}\n"


class AuthorizedNats:
    """A nats-server whose services' user ``svc`` can be refused from now on (``revoke``); the
    test's own user ``tests`` is kept."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "users.conf"
        self.conf.write_text(_USERS.format(svc="one"))
        self.monitor = free_port()
        self.server: LocalServer = start_nats(folder, extra_args=("-c", str(self.conf), "-m", str(self.monitor)))

    def url(self, user: str, password: str) -> str:
        return self.server.url.replace("nats://", f"nats://{user}:{password}@")

    @property
    def service_url(self) -> str:
        return self.url("svc", "one")

    def revoke(self) -> None:
        """The server closes the services' connections with -ERR 'Authorization Violation' and
        refuses them from now on: nats-py closes them for good."""
        self._reload("two")

    def restore(self) -> None:
        """The services' user is let in again (a new connection: a closed one stays closed)."""
        self._reload("one")

    def _reload(self, password: str) -> None:
        self.conf.write_text(_USERS.format(svc=password))
        self.server.process.send_signal(signal.SIGHUP)

    def connections(self, prefix: str) -> list[str]:
        answer = httpx.get(f"http://127.0.0.1:{self.monitor}/connz", timeout=5).json()
        return [c.get("name", "") for c in answer.get("connections") or [] if c.get("name", "").startswith(prefix)]
