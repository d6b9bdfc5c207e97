"""``conductor up``: the whole system on one machine, each service its own process.

Starts the embedded servers unless ``NATS_URL`` / ``DATABASE_URL`` point elsewhere, migrates the read
models, then runs gateway, scheduler, projector and one executor, restarting any that dies (with a
back-off). SIGINT/SIGTERM stops the services first (so executors stop their jobs), then the servers.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from conductor_platform import localservers
from conductor_projector import migrate

log = logging.getLogger("conductor.supervisor")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env)
        self.started_at = time.monotonic()
        log.info("started %s (pid %s)", self.name, self.process.pid)


@dataclass
class UpOptions:
    var_dir: Path
    executor_args: list[str]
    gateway_port: int | None = None


class Supervisor:
    def __init__(self, options: UpOptions) -> None:
        self.options = options
        self.servers: list[localservers.LocalServer] = []
        self.children: list[Child] = []
        self.stopping = False

    def _servers(self, env: dict[str, str]) -> None:
        var = self.options.var_dir
        if not env.get("NATS_URL"):
            nats = localservers.start_nats(var / "nats")
            self.servers.append(nats)
            env["NATS_URL"] = nats.url
            log.info("nats-server with JetStream at %s (data in %s)", nats.url, var / "nats")
        if not env.get("DATABASE_URL"):
            pg = localservers.start_postgres(var / "postgres")
            self.servers.append(pg)
            env["DATABASE_URL"] = pg.url
            log.info("PostgreSQL at %s (data in %s)", pg.url, var / "postgres")

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        env = dict(os.environ)
        env.setdefault("CONDUCTOR_STATE_DIR", str(self.options.var_dir / "executor"))
        # One scheduler here: a stable id lets the restarted one take its lease back at once.
        env.setdefault("CONDUCTOR_SCHEDULER_ID", f"{socket.gethostname()}-{self.options.var_dir}")
        if self.options.gateway_port:
            env["CONDUCTOR_PORT"] = str(self.options.gateway_port)
        port = int(env.get("CONDUCTOR_PORT", "8000"))
        if not _port_free(env.get("CONDUCTOR_HOST", "127.0.0.1"), port):
            log.error("port %s is in use (another conductor up?): choose another with --port or CONDUCTOR_PORT", port)
            return 1
        try:
            self.options.var_dir.mkdir(parents=True, exist_ok=True)
            self._servers(env)
            migrate.upgrade(env["DATABASE_URL"])
            py = sys.executable
            self.children = [
                Child("projector", [py, "-m", "conductor_projector"], env=env),
                Child("scheduler", [py, "-m", "conductor_scheduler"], env=env),
                Child("executor", [py, "-m", "conductor_executor", *self.options.executor_args], env=env),
                Child("gateway", [py, "-m", "conductor_gateway"], env=env),
            ]
            for child in self.children:
                child.start()
            log.info("SCNS-Conductor is up: http://127.0.0.1:%s (Ctrl-C stops everything)", port)
            self._watch()
        finally:
            self._stop_all()
        return 0

    def _watch(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                proc = child.process
                if proc is None:
                    if now >= child.next_start:
                        child.start()
                    continue
                code = proc.poll()
                if code is None:
                    continue
                # Back off when a service keeps dying soon after starting; reset once it stays up.
                quick = now - child.started_at < 10
                child.restarts = child.restarts + 1 if quick else 0
                delay = min(30.0, 0.5 * 2**child.restarts) if quick else 0.5
                log.warning("%s exited with %s; restarting in %.1fs", child.name, code, delay)
                child.process, child.next_start = None, now + delay
            time.sleep(0.2)

    def _stop_all(self) -> None:
        running = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for server in reversed(self.servers):
            server.stop()
        log.info("stopped")
