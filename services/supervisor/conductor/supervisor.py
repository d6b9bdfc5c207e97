"""``conductor up``: the whole system on one machine, each service its own process.

Starts the embedded servers unless ``NATS_URL`` / ``DATABASE_URL`` point elsewhere, migrates the read
models, then runs gateway, scheduler, projector and one executor, restarting any that dies (with a
back-off) with the same metrics port it had. ``--gateways N`` runs N gateway processes on the one
port (SO_REUSEPORT: the kernel spreads connections over them); gateways are stateless, so this is
how intake scales on one machine, as gateway replicas do on Kubernetes. An embedded server that
dies is started again on the same port with the same data (with the same back-off); the services
reconnect by themselves. Servers
named in ``NATS_URL`` / ``DATABASE_URL`` are someone else's: never started, stopped or restarted
here. SIGINT/SIGTERM stops the services first (so executors stop their jobs), then the servers.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conductor_contracts.text import printable
from conductor_platform import localservers
from conductor_platform.folder_lock import holder, lock_folder
from conductor_platform.settings import EXIT_BAD_SETTING
from conductor_projector import migrate

log = logging.getLogger("conductor.supervisor")


def _bind_error(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be listened on, or None."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
            s.bind((host, port))
    except OSError as err:  # socket.gaierror too: a host that resolves to nothing
        return err
    return None


def _port_free(host: str, port: int) -> bool:
    return _bind_error(host, port) is None


LOCK_FILE = "conductor-up.lock"


def lock_var_dir(var_dir: Path) -> int | None:
    """An open file holding an exclusive lock on ``var_dir`` for as long as this process lives, or None
    when another ``conductor up`` holds it: two on one folder started a second nats-server on the
    first one's JetStream store, and, given the first one's PostgreSQL, answered "not found" for
    jobs the first had acknowledged. Not inherited by the servers and services (close-on-exec)."""
    return lock_folder(var_dir, LOCK_FILE)


_GO_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))")
_GO_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def nats_sync_interval(value: str) -> str | None:
    """``--sync``: ``always``, ``default`` (None: the server's own, every 2 minutes) or a positive Go
    duration such as ``10s`` or ``1m30s``, which is what nats-server's ``sync_interval`` accepts."""
    if value == "always":
        return value
    if value == "default":
        return None
    parts = _GO_DURATION.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise ValueError(f"--sync takes always, default or a duration like 10s or 1m30s, not {value!r}")
    if sum(float(number) * _GO_UNIT_S[unit] for number, unit in parts) <= 0:
        raise ValueError("--sync: a zero interval would mean the default; say default, or always")
    return value


SERVICES = ("gateway", "scheduler", "executor", "projector")


def _port_number(text: str) -> int | None:
    """``text`` as a port, or None: ASCII digits only (``"٣"`` passes ``isdigit`` and would be port 3)."""
    if text.isascii() and text.isdigit() and 1 <= int(text) <= 65535:
        return int(text)
    return None


def metrics_ports(env: dict[str, str], services: tuple[str, ...] = SERVICES, http_port: int = 0) -> dict[str, int]:
    """A metrics port for each service: ``CONDUCTOR_<SERVICE>_METRICS_PORT`` when set (a fixed
    address to scrape), else a free one. Chosen once, so a restarted service keeps its port. A
    service whose port is taken would only exit and be restarted, again and again, so two services
    on one port, or one on the gateway's ``http_port``, are refused here."""
    taken = {http_port: "the gateway's HTTP port"} if http_port else {}
    ports: dict[str, int] = {}
    for service in services:
        name = f"CONDUCTOR_{service.upper()}_METRICS_PORT"
        value = env.get(name)
        if value:
            port = _port_number(value)
            if port is None:
                raise ValueError(f"{name} must be a port number, not {value!r}")
            if port in taken:
                raise ValueError(f"{name}={value} is already {taken[port]}")
            ports[service] = port
            taken[port] = name
    for service in services:
        if service not in ports:
            ports[service] = localservers.free_port(avoid=taken)
    return ports


def _backoff(service: str, env: dict[str, str]) -> Backoff:
    """An executor down longer than ``node_lost_after_s`` has its node declared lost, its jobs ended
    (NODE_FAIL, or requeued, a requeue each time: a review's executor stopped over and over waited 31 s
    to start again, and its requeue jobs used up their requeues without running). Its restarts wait
    at most a sixth of that: a requeue job's supervisor fences it two beats before the node can be
    declared lost, and the silence is the wait, the start (~1.5 s) and the time to the first beat.
    An executor that dies again and again before it beats has its node declared lost all the same."""
    if service != "executor":
        return Backoff()
    try:
        lost_after_s = float(env.get("CONDUCTOR_NODE_LOST_AFTER_S", "30"))
    except ValueError:  # the executor says what is wrong with it when it starts
        lost_after_s = 30.0
    return Backoff(max_s=max(0.5, min(Backoff.max_s, lost_after_s / 6)))


def _shown_host(host: str) -> str:
    # A wildcard address is reachable on the loopback; an IPv6 one needs its brackets in a URL.
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@dataclass
class Backoff:
    """When to start again something that stopped: soon if it had run a while, then twice as late
    each time it dies (or fails to start) again soon after starting, up to ``max_s``."""

    first_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 10.0
    failures: int = 0

    def delay_after(self, ran_for_s: float) -> float:
        if ran_for_s >= self.stable_s:
            self.failures = 0
        delay = min(self.max_s, self.first_s * 2.0 ** min(self.failures, 32))  # bounded: no float overflow
        self.failures += 1
        return delay


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    next_start: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    backoff: Backoff = field(default_factory=Backoff)

    keep_fds: tuple[int, ...] = ()

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env, pass_fds=self.keep_fds)
        self.started_at = time.monotonic()
        log.info("started %s (pid %s)", self.name, self.process.pid)


@dataclass
class ManagedServer:
    """A server ``conductor up`` started itself; ``start`` starts it on the same port and folder
    every time, so a restarted one has the same address and data."""

    name: str
    start: Callable[[], localservers.LocalServer]
    server: localservers.LocalServer | None = None
    started_at: float = 0.0
    next_start: float = 0.0
    backoff: Backoff = field(default_factory=Backoff)

    def first_start(self) -> localservers.LocalServer:
        self.server = self.start()
        self.started_at = time.monotonic()
        return self.server

    def check(self, now: float, stopping: bool) -> None:
        """Notice a death and schedule the restart; restart when it is due."""
        if self.server is not None:
            code = self.server.process.poll()
            if code is None:
                return
            delay = self.backoff.delay_after(now - self.started_at)
            log.warning(
                "%s (pid %s) exited with %s; starting it again on the same port and data in %.1fs",
                self.name,
                self.server.process.pid,
                describe_exit(code),
                delay,
            )
            self.server, self.next_start = None, now + delay
            return
        if stopping or now < self.next_start:
            return
        try:
            server = self.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            delay = self.backoff.delay_after(0.0)
            log.warning("%s did not start again (%s); next try in %.1fs", self.name, error, delay)
            self.next_start = time.monotonic() + delay
            return
        self.server, self.started_at = server, time.monotonic()
        log.info("%s is back at %s (pid %s)", self.name, server.url, server.process.pid)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@dataclass
class UpOptions:
    var_dir: Path
    executor_args: list[str]
    gateway_port: int | None = None
    nats_sync: str | None = None  # nats_sync_interval(): None is the server's default
    gateways: int = 1  # gateway processes on the one port (SO_REUSEPORT)


class Supervisor:
    def __init__(self, options: UpOptions) -> None:
        self.options = options
        self.servers: list[ManagedServer] = []
        self.children: list[Child] = []
        self.stopping = False
        self.lock: int | None = None
        # The gateway's and the metrics ports, chosen before anything binds them (the test session
        # may have chosen them in its own process): the servers' ports must leave them out.
        self.reserved: set[int] = set()
        self.bad_setting = False  # a service ended with EXIT_BAD_SETTING: conductor up ends with 1

    def _servers(self, env: dict[str, str]) -> None:
        var = self.options.var_dir
        if env.get("NATS_URL"):
            log.info("NATS at %s: not started, stopped or restarted by conductor up", env["NATS_URL"])
        else:
            nats = ManagedServer(
                "nats-server",
                functools.partial(
                    localservers.start_nats,
                    var / "nats",
                    localservers.free_port(avoid=self.reserved),
                    sync_interval=self.options.nats_sync,
                    keep_fds=self._held(),
                ),
            )
            self.servers.append(nats)
            env["NATS_URL"] = nats.first_start().url
            fsync = self.options.nats_sync or "every 2 minutes (the default)"
            log.info("nats-server with JetStream at %s (data in %s, fsync: %s)", env["NATS_URL"], var / "nats", fsync)
        if env.get("DATABASE_URL"):
            log.info("PostgreSQL at its DATABASE_URL: not started, stopped or restarted by conductor up")
        else:
            pg = ManagedServer(
                "postgres",
                functools.partial(
                    localservers.start_postgres,
                    var / "postgres",
                    localservers.free_port(avoid=self.reserved),
                    keep_fds=self._held(),
                ),
            )
            self.servers.append(pg)
            env["DATABASE_URL"] = pg.first_start().url
            log.info("PostgreSQL at %s (data in %s)", env["DATABASE_URL"], var / "postgres")

    def _held(self) -> tuple[int, ...]:
        """The var folder's lock, for every process started here to hold too: a SIGKILL of conductor up
        left its servers and services running, the lock released, and a second conductor up started
        another nats-server on the live store (jobs lost, one id given to two jobs)."""
        return () if self.lock is None else (self.lock,)

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        env = dict(os.environ)
        if self.options.nats_sync and env.get("NATS_URL"):
            log.error(
                "--sync applies to the nats-server conductor up starts, and NATS_URL names another: "
                "set sync_interval in that server's configuration instead"
            )
            return 2
        env.setdefault("CONDUCTOR_STATE_DIR", str(self.options.var_dir / "executor"))
        # Where `conductor compact` puts the log's oldest events, and the scheduler and a rebuild find them.
        env.setdefault("CONDUCTOR_ARCHIVE_DIR", str(self.options.var_dir / "archive"))
        # NATS's log, PostgreSQL's data and the archive: no job may name them as its output (which is
        # truncated) or its working directory.
        protected = [str(self.options.var_dir.resolve()), str(Path(env["CONDUCTOR_ARCHIVE_DIR"]).resolve())]
        env.setdefault("CONDUCTOR_PROTECTED_DIRS", json.dumps(protected))
        # Ctrl-C stops everything, jobs included; an executor that dies is restarted and takes its
        # jobs over (only a stop asks it to end them).
        env.setdefault("CONDUCTOR_STOP_JOBS_ON_EXIT", "1")
        # One scheduler here: a stable id lets the restarted one take its lease back at once.
        env.setdefault("CONDUCTOR_SCHEDULER_ID", f"{socket.gethostname()}-{self.options.var_dir}")
        if self.options.gateway_port is not None:  # --port 0 was taken for "not given": 8000
            env["CONDUCTOR_PORT"] = str(self.options.gateway_port)
        port_text = env.get("CONDUCTOR_PORT", "8000")
        port = _port_number(port_text)
        if port is None:
            log.error("the gateway's port (--port, CONDUCTOR_PORT) must be a port number 1-65535, not %r", port_text)
            return 2
        host = env.get("CONDUCTOR_HOST", "127.0.0.1")
        if (error := _bind_error(host, port)) is not None:
            if error.errno == errno.EADDRINUSE:
                log.error("port %s is in use (another conductor up?): choose --port or CONDUCTOR_PORT", port)
                return 1
            log.error("the gateway cannot listen on CONDUCTOR_HOST=%r, port %s: %s", host, port, error)
            return 2
        try:
            ports = metrics_ports(env, http_port=port)
        except ValueError as error:
            log.error("%s", error)
            return 2
        self.reserved = {port, *ports.values()}
        host = env.get("CONDUCTOR_HOST", "127.0.0.1")
        for service, metrics_port in ports.items():
            if env.get(f"CONDUCTOR_{service.upper()}_METRICS_PORT") and not _port_free(host, metrics_port):
                log.error("CONDUCTOR_%s_METRICS_PORT=%s is in use: choose another", service.upper(), metrics_port)
                return 1
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        try:
            try:
                self.lock = lock_var_dir(self.options.var_dir)
            except OSError as err:
                log.error("cannot use the var folder %s: %s", self.options.var_dir, err)
                return 2
            if self.lock is None:
                log.error(
                    "another conductor up (pid %s), or a server or service it started and left running, uses the "
                    "var folder %s: stop them, or choose another --var-dir",
                    holder(self.options.var_dir, LOCK_FILE),
                    self.options.var_dir,
                )
                return 2
            try:
                self._servers(env)
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                log.error("could not start the servers: %s", error)
                return 1
            try:
                if not migrate.upgrade_unless(env["DATABASE_URL"], lambda: self.stopping):
                    return 0  # Ctrl-C while the schema was brought up to date
            except Exception as error:  # an external DATABASE_URL refused, or not a PostgreSQL at all
                log.error(
                    "could not bring the read models' schema up to date at DATABASE_URL: %s", printable(error, 500)
                )
                return 1
            py = sys.executable
            argvs = {
                "projector": [py, "-m", "conductor_projector"],
                "scheduler": [py, "-m", "conductor_scheduler"],
                "executor": [py, "-m", "conductor_executor", *self.options.executor_args],
                "gateway": [py, "-m", "conductor_gateway"],
            }
            self.children = [
                Child(name, argv, env=env | {"CONDUCTOR_METRICS_PORT": str(ports[name])}, backoff=_backoff(name, env))
                for name, argv in argvs.items()
                if name != "gateway"
            ]
            self.children += self._gateways(argvs["gateway"], env, ports)
            for child in self.children:
                child.keep_fds = self._held()
                child.start()
            log.info("SCNS-Conductor is up: http://127.0.0.1:%s (Ctrl-C stops everything)", port)
            shown = _shown_host(env.get("CONDUCTOR_HOST", "127.0.0.1"))
            log.info("metrics: %s", ", ".join(f"{name} http://{shown}:{ports[name]}/metrics" for name in sorted(ports)))
            self._watch()
        finally:
            self._stop_all()
        return 1 if self.bad_setting else 0

    def _gateways(self, argv: list[str], env: dict[str, str], ports: dict[str, int]) -> list[Child]:
        """``--gateways N``: N gateway processes listening on the one port with SO_REUSEPORT (the
        kernel spreads connections over them), each with its own metrics port. They share nothing
        but NATS and PostgreSQL, like gateway pods behind a Service."""
        count = self.options.gateways
        if count == 1:
            return [Child("gateway", argv, env=env | {"CONDUCTOR_METRICS_PORT": str(ports["gateway"])})]
        children = []
        for number in range(1, count + 1):
            name = f"gateway-{number}"
            # The first keeps the gateway's port (CONDUCTOR_GATEWAY_METRICS_PORT, when set).
            ports[name] = ports.pop("gateway") if number == 1 else localservers.free_port(avoid=self.reserved)
            extra = {"CONDUCTOR_METRICS_PORT": str(ports[name]), "CONDUCTOR_REUSE_PORT": "1"}
            children.append(Child(name, argv, env=env | extra))
        return children

    def _watch(self) -> None:
        while not self.stopping:
            for server in self.servers:
                # A restart blocks this loop for as long as the server takes to start (about a
                # second); the services meanwhile retry on their own.
                server.check(time.monotonic(), self.stopping)
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
                if code == EXIT_BAD_SETTING:
                    log.error(
                        "%s exited: a setting does not hold (what is wrong is above), and starting it again "
                        "with the same settings cannot mend it; stopping",
                        child.name,
                    )
                    self.bad_setting = self.stopping = True
                    break
                delay = child.backoff.delay_after(now - child.started_at)
                log.warning("%s exited with %s; restarting in %.1fs", child.name, describe_exit(code), delay)
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
