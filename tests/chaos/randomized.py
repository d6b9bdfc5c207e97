"""A randomized chaos run: hundreds of short jobs submitted over HTTP while every part of a
``conductor up`` is SIGKILLed at random moments, then an account of every job.

    python -m tests.chaos.randomized --rounds 12 --jobs 400 --seed 123     (make chaos)

Each job appends ``start <job id> <pid>`` and ``end <job id> <pid>`` to one ledger file (appends of
one short line are atomic on Linux), so the ledger says how often and when each job really ran,
whatever the system believes. A standby scheduler (a second ``python -m conductor_scheduler``) runs
beside the one ``conductor up`` supervises. Each round kills one of: the gateway, the scheduler that
holds the lease, the projector, the executor, nats-server, PostgreSQL; ``conductor up`` must start
it again (only the standby, which it does not supervise, is restarted here), and how long that took
is measured. The seed is printed first: ``--seed N`` or ``CHAOS_SEED=N`` replays the same faults,
order and pauses (the moments a kill lands in the system's life still vary with timing).

At the end, once every acknowledged job is terminal, the checks: nothing acknowledged lost, no job run
twice (requeued jobs counted apart, and never two runs at once), and read models equal to a rebuild
from the log (``conductor projector --rebuild`` into a second database, compared table by table).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import httpx
import nats
import nats.errors
import nats.js.errors
import psutil

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.localservers import free_port

# "node-lost": the executor frozen (SIGSTOP) past the silence after which the scheduler declares its
# node lost, then thawed: its jobs end NODE_FAIL or are requeued, and the executor, seeing the loss,
# kills what it still runs of them and registers again.
FAULTS = ("gateway", "scheduler", "projector", "executor", "nats-server", "postgres", "node-lost")
NODE_LOST_AFTER_S = 3.0
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"})
TABLES = {  # table -> its key, for ordering rows
    "jobs": "job_id",
    "nodes": "name",
    "users": "user_id",
    "workflows": "workflow_id",
    "dead_letters": "consumer, stream_seq",
    "projector_positions": "name",
}
# Columns whose value is when the projector wrote the row, not a fact of the log: not compared.
TIME_OF_PROJECTION = {"dead_letters": frozenset({"recorded_at"})}
STANDBY_ID = "chaos-standby"
T = TypeVar("T")
NODE = "chaos"


@dataclass
class Config:
    rounds: int = 16
    jobs: int = 400
    seed: int = 0
    root: Path = Path("var/chaos")
    pause_s: tuple[float, float] = (2.0, 6.0)  # between two kills
    each_fault_at_least: int = 2
    requeue_share: float = 0.3  # jobs submitted with "requeue": true
    failing_share: float = 0.1  # jobs that exit 3 (FAILED): the read models hold more than one outcome
    job_seconds: tuple[float, float] = (0.1, 1.5)
    cpus: int = 4
    back_timeout_s: float = 90.0  # a killed part not back within this is a defect
    drain_timeout_s: float = 600.0  # after the faults: every acknowledged job terminal within this
    submit_timeout_s: float = 300.0  # one submit retried for this long before the client gives up


@dataclass
class Fault:
    kind: str
    at_s: float  # since the start of the faults
    back_s: float | None  # None: not back within the timeout
    detail: str = ""


@dataclass
class Report:
    seed: int
    rounds: int
    faults: list[Fault] = field(default_factory=list)
    acknowledged: int = 0
    submits: int = 0  # HTTP attempts, retries included
    given_up: list[int] = field(default_factory=list)  # job indices the client never got acknowledged
    refused: list[str] = field(default_factory=list)  # 4xx answers: never expected here
    terminal: int = 0
    states: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    run_twice: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    requeued_runs: int = 0
    overlapping: list[int] = field(default_factory=list)
    ran_but_not_in_the_log: list[int] = field(default_factory=list)
    workflows: str = ""
    workflows_unanswered: list[str] = field(default_factory=list)  # not retried: see submit_workflow
    stored_without_acknowledgement: int = 0
    completed_without_running: list[int] = field(default_factory=list)
    duplicate_submissions: list[str] = field(default_factory=list)
    duplicate_outcomes: list[str] = field(default_factory=list)
    late_reports: int = 0  # an executor's outcome of a run already ended NODE_FAIL by a node loss
    requeues_refused: int = 0  # requeue jobs ended FAILED past CONDUCTOR_MAX_REQUEUES
    standby_led: int = 0
    rebuild_diffs: dict[str, list[str]] = field(default_factory=dict)
    rows_compared: dict[str, int] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)

    @property
    def defects(self) -> list[str]:
        found = []
        for fault in self.faults:
            if fault.back_s is None:
                found.append(f"{fault.kind} killed at {fault.at_s:.1f}s did not come back")
        named: dict[str, list[str] | list[int]] = {
            "lost": self.lost,
            "run twice": self.run_twice,
            "two runs at once": self.overlapping,
            "ran but not in the log": self.ran_but_not_in_the_log,
            "COMPLETED without running": self.completed_without_running,
            "submitted twice": self.duplicate_submissions,
            "two outcomes for one run": self.duplicate_outcomes,
            "submits refused": self.refused,
            "submits never acknowledged": self.given_up,
        }
        found += [f"{what}: {items[:20]}" for what, items in named.items() if items]
        found += [f"table {table} differs from its rebuild: {diffs[:5]}" for table, diffs in self.rebuild_diffs.items()]
        return found

    def lines(self) -> list[str]:
        kinds = Counter(f.kind for f in self.faults)
        out = [f"seed {self.seed}, rounds {self.rounds}"]
        for kind in FAULTS:
            backs = [f.back_s for f in self.faults if f.kind == kind and f.back_s is not None]
            shown = ", ".join(f"{b:.1f}" for b in backs)
            out.append(f"  {kind:<12} killed {kinds[kind]}x, back after [{shown}] s")
        leaders = [f.detail for f in self.faults if f.kind == "scheduler"]
        out.append(f"  scheduler kills hit: {leaders}; the standby became leader {self.standby_led}x")
        out += [
            f"submits acknowledged {self.acknowledged} (HTTP attempts {self.submits}, refused {len(self.refused)}, "
            f"given up {len(self.given_up)})",
            f"workflows {self.workflows} (unanswered: {self.workflows_unanswered}); jobs stored without "
            f"an acknowledgement (found in the log, checked alike) {self.stored_without_acknowledgement}",
            f"jobs in a terminal state {self.terminal}: {dict(sorted(self.states.items()))}",
            f"lost {len(self.lost)}",
            f"run twice {len(self.run_twice)} (requeued jobs apart: {len(self.requeued)} jobs, "
            f"{self.requeued_runs} runs in the ledger, two runs at once {len(self.overlapping)})",
            f"NODE_FAIL {self.states['NODE_FAIL']} (late reports of their executor, ignored: {self.late_reports}); "
            f"requeue jobs ended past their requeues {self.requeues_refused}",
            f"submitted twice {len(self.duplicate_submissions)}, two outcomes for one run "
            f"{len(self.duplicate_outcomes)}, COMPLETED without running {len(self.completed_without_running)}",
            "read models vs rebuild from the log: "
            + ", ".join(
                f"{t} {n} rows {'equal' if t not in self.rebuild_diffs else 'DIFFER'}"
                for t, n in self.rows_compared.items()
            )
            + f" (not compared: {', '.join(f'{t}.{c}' for t, cs in TIME_OF_PROJECTION.items() for c in sorted(cs))})",
            "durations: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.durations.items()),
        ]
        out.append("DEFECTS: " + "; ".join(self.defects) if self.defects else "no defects found")
        return out


# --- the system under test -------------------------------------------------------------------------


class Up:
    """``conductor up`` on its own servers and folder, plus a standby scheduler."""

    def __init__(self, root: Path, cpus: int) -> None:
        self.root, self.var, self.work = root, root / "var", root / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
        self.env = env | {"CONDUCTOR_KILL_GRACE_S": "2", "CONDUCTOR_NODE_LOST_AFTER_S": str(NODE_LOST_AFTER_S)}
        argv = [sys.executable, "-m", "conductor", "up", "--var-dir", str(self.var), "--port", str(self.port)]
        argv += ["--node", NODE, "--cpus", str(cpus), "--memory", "4G"]
        with open(root / "conductor-up.log", "ab") as log:
            self.process = subprocess.Popen(argv, env=self.env, stderr=log)
        self.standby: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"conductor up exited with {self.process.returncode}: see {self.root}")
            try:
                return bool(self.http.get("/nodes").json()["nodes"])
            except (httpx.HTTPError, ValueError, KeyError):
                return False

        _wait(ready, timeout, "conductor up with its node registered")

    def children(self) -> list[psutil.Process]:
        try:
            return list(psutil.Process(self.process.pid).children())
        except psutil.Error:
            return []

    def find(self, kind: str) -> list[psutil.Process]:
        """``conductor up``'s child running ``kind`` (servers by their binary, services by module)."""
        found = []
        for child in self.children():
            try:
                argv = child.cmdline()
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            if not argv:
                continue
            if kind in ("nats-server", "postgres"):
                if Path(argv[0]).name == kind:
                    found.append(child)
            elif f"conductor_{kind}" in argv:
                found.append(child)
        return found

    def server_port(self, kind: str) -> int:
        [server] = self.find(kind)
        argv = server.cmdline()
        return int(argv[argv.index("-p") + 1])

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.server_port('nats-server')}"

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.server_port('postgres')}/conductor"

    def start_standby(self, nats_url: str) -> None:
        env = self.env | {"NATS_URL": nats_url, "CONDUCTOR_SCHEDULER_ID": STANDBY_ID}
        env.pop("CONDUCTOR_METRICS_PORT", None)
        with open(self.root / "standby-scheduler.log", "ab") as log:
            self.standby = subprocess.Popen([sys.executable, "-m", "conductor_scheduler"], env=env, stderr=log)

    def standby_leaderships(self) -> int:
        log = self.root / "standby-scheduler.log"
        return log.read_text(errors="replace").count("became leader") if log.exists() else 0

    def stop(self) -> None:
        if self.standby is not None and self.standby.poll() is None:
            self.standby.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.standby.wait(30)
            if self.standby.poll() is None:
                self.standby.kill()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.http.close()


def _wait(probe: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(0.1)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def _lease_holder(nats_url: str) -> str | None:
    try:
        nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False)
    except Exception:
        return None
    try:
        kv = await nc.jetstream(timeout=2).key_value(subjects.LEASES_BUCKET)
        entry = await kv.get(subjects.SCHEDULER_LEASE_KEY)
        return (entry.value or b"").decode()
    except Exception:  # no lease right now (expired, or NATS away): nobody leads
        return None
    finally:
        await nc.close()


class Faults:
    """Kills one part and waits for it to be back (started again and answering)."""

    def __init__(self, up: Up, nats_url: str, timeout_s: float) -> None:
        self.up, self.nats_url, self.timeout_s = up, nats_url, timeout_s
        self.nats_port, self.pg_port = up.server_port("nats-server"), up.server_port("postgres")
        self.failed_over = False

    def _crash_loop(self) -> tuple[float | None, str]:
        """The first scheduler fault: conductor up's scheduler killed each time it is back, until the
        standby holds the lease. A single kill never hands over: the restarted scheduler, with its
        stable id, takes its lease back at once, before the 10 s lease could expire; a crash loop
        does, once conductor up's back-off (doubling from 0.5 s) keeps it away past the lease."""
        started, kills = time.monotonic(), 0
        while time.monotonic() - started < self.timeout_s:
            if asyncio.run(_lease_holder(self.nats_url)) == STANDBY_ID:
                self.failed_over = True
                return time.monotonic() - started, f"crash loop: {kills} kills until the standby led"
            victims = self.up.find("scheduler")
            if victims:
                victims[0].kill()
                kills += 1
                with contextlib.suppress(psutil.Error):
                    victims[0].wait(10)
            time.sleep(0.3)
        return None, f"crash loop: {kills} kills, the standby never led"

    def _freeze_executor(self) -> tuple[float | None, str]:
        """SIGSTOP the executor past the node's silence, SIGCONT it; back when the log holds a NodeLost
        and the node is UP again (registered after it)."""
        victims = self.up.find("executor")
        if len(victims) != 1:
            return None, f"{len(victims)} executors found"
        # A node still lost from the fault before (an executor killed and slow to beat again, lost
        # after 3 s) would be frozen without being declared lost again, and never "come back".
        try:
            _wait(lambda: asyncio.run(_node_settled(self.nats_url, victims[0].pid)), self.timeout_s, "node settled")
        except TimeoutError:
            return None, "the executor never beat and registered after the node's last loss"
        lost_before = asyncio.run(_node_losses(self.nats_url))
        started = time.monotonic()
        victims[0].suspend()
        time.sleep(NODE_LOST_AFTER_S + 2.0)
        victims[0].resume()

        def back() -> bool:
            if asyncio.run(_node_losses(self.nats_url)) <= lost_before:
                return False
            try:
                nodes = self.up.http.get("/nodes", timeout=2).json()["nodes"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            return any(n["name"] == NODE and n["state"] == "UP" for n in nodes)

        try:
            _wait(back, self.timeout_s, "the node lost and back")
        except TimeoutError:
            return None, "frozen: no NodeLost, or the node never came back"
        return time.monotonic() - started, f"frozen {NODE_LOST_AFTER_S + 2.0:.0f}s: declared lost, registered again"

    def inject(self, kind: str) -> tuple[float | None, str]:
        detail = ""
        if kind == "node-lost":
            return self._freeze_executor()
        if kind == "scheduler":
            holder = asyncio.run(_lease_holder(self.nats_url))
            if holder != STANDBY_ID and not self.failed_over:
                return self._crash_loop()
            if holder == STANDBY_ID and self.up.standby is not None:
                # The standby leads: kill it, and be its supervisor (conductor up does not know it).
                led, started = self.up.standby_leaderships(), time.monotonic()
                self.up.standby.kill()
                self.up.standby.wait()
                self.up.start_standby(self.nats_url)

                def leads_again() -> bool:  # the new standby (its stable id) or conductor up's
                    holder = asyncio.run(_lease_holder(self.nats_url))
                    return self.up.standby_leaderships() > led or holder not in (None, STANDBY_ID)

                try:
                    _wait(leads_again, self.timeout_s, "a scheduler leading again")
                except TimeoutError:
                    return None, "standby (leader): no scheduler led again"
                return time.monotonic() - started, "standby (leader), back when a scheduler leads again"
            detail = "conductor up's (leader)" if holder else "conductor up's (no leader seen)"
        victims = self.up.find(kind)
        if len(victims) != 1:
            return None, f"{len(victims)} processes found for {kind}"
        victim = victims[0]
        started = time.monotonic()
        victim.kill()
        with contextlib.suppress(psutil.Error):
            victim.wait(10)  # conductor up reaps it; wait() returns once it is gone
        try:
            _wait(lambda: self._back(kind, victim.pid), self.timeout_s, f"{kind} back")
        except TimeoutError:
            return None, detail
        return time.monotonic() - started, detail

    def _back(self, kind: str, old_pid: int) -> bool:
        again = [p for p in self.up.find(kind) if p.pid != old_pid]
        if not again:
            return False
        if kind == "nats-server":
            return _port_open(self.nats_port)
        if kind == "postgres":
            return _port_open(self.pg_port)
        if kind == "gateway":
            try:
                return self.up.http.get("/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        return True


def fault_plan(rng: random.Random, rounds: int, at_least: int) -> list[str]:
    """``rounds`` kills, each kind at least ``at_least`` times (as far as ``rounds`` allows: every
    kind once before any twice), the rest drawn at random, all in a random order."""
    plan = [kind for _ in range(at_least) for kind in FAULTS][: max(rounds, 0)]
    plan += [rng.choice(FAULTS) for _ in range(rounds - len(plan))]
    rng.shuffle(plan)
    return plan


# --- the workload --------------------------------------------------------------------------------


@dataclass
class Job:
    index: int
    body: dict[str, Any]
    job_id: int | None = None


def _script(config: Config, rng: random.Random, ledger: Path) -> str:
    seconds = rng.uniform(*config.job_seconds)
    code = 3 if rng.random() < config.failing_share else 0
    return (
        f'echo "start $SLURM_JOB_ID $$" >> {ledger}\n'
        f"sleep {seconds:.2f}\n"
        f'echo "end $SLURM_JOB_ID $$" >> {ledger}\n'
        f"exit {code}\n"
    )


def workload(config: Config, rng: random.Random, work: Path, ledger: Path) -> list[Job]:
    jobs = []
    for i in range(config.jobs):
        script = _script(config, rng, ledger)
        spec = {
            "name": f"chaos-{config.seed}-{i}",
            "account": "chaos",
            "partition": "default",
            "ntasks_per_node": 1,
            "cpus_per_task": 1,
            "memory_per_node": "50M",
            "time_limit": "5",
            "current_working_directory": str(work),
            "standard_output": "/dev/null",
            "standard_error": "/dev/null",
            "requeue": rng.random() < config.requeue_share,
        }
        jobs.append(Job(i, {"job": spec, "script": script}))
    return jobs


@dataclass
class Workflow:
    index: int
    body: dict[str, Any]
    job_ids: list[int] = field(default_factory=list)
    answer: str = ""  # what the last attempt got, when it was not an acknowledgement


def workflows(config: Config, rng: random.Random, work: Path, ledger: Path, user_ids: list[str]) -> list[Workflow]:
    """Diamonds of four jobs (one per 50 single jobs): the users and workflows tables get rows whose
    rebuild is compared too, and dependencies are settled while the parts die."""
    out = []
    for k in range(max(1, config.jobs // 50)):
        common = {"account": "chaos", "current_working_directory": str(work), "memory_per_node": "50M"}
        common |= {"standard_output": "/dev/null", "time_limit": "5"}
        shape = [("split", []), ("left", [0]), ("right", [0]), ("join", [1, 2])]
        jobs = [
            common | {"name": f"chaos-{config.seed}-w{k}-{name}", "parent_indices": parents} for name, parents in shape
        ]
        for job in jobs:
            job["script"] = _script(config, rng, ledger)
        body = {"user_id": rng.choice(user_ids), "name": f"chaos-{config.seed}-w{k}", "jobs": jobs}
        out.append(Workflow(k, body))
    return out


class Submitter:
    """Submits each job with its own ``Idempotency-Key``, again with the same key after an error or
    a 5xx (an answer lost on the way may mean a stored job: the same key finds it)."""

    def __init__(self, url: str, seed: int, timeout_s: float) -> None:
        self.url, self.seed, self.timeout_s = url, seed, timeout_s
        self.attempts = 0
        self.refused: list[str] = []
        self.lock = threading.Lock()
        self.local = threading.local()

    def _client(self) -> httpx.Client:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(base_url=self.url, timeout=10)
        client: httpx.Client = self.local.client
        return client

    def submit(self, job: Job) -> None:
        headers = {"Idempotency-Key": f"chaos-{self.seed}-{job.index}"}
        deadline, pause = time.monotonic() + self.timeout_s, 0.2
        while time.monotonic() < deadline:
            with self.lock:
                self.attempts += 1
            try:
                answer = self._client().post("/jobs/submit", json=job.body, headers=headers)
            except httpx.HTTPError:
                answer = None
            if answer is not None and answer.status_code == 200:
                job.job_id = int(answer.json()["job_id"])
                return
            if answer is not None and answer.status_code < 500:
                with self.lock:
                    self.refused.append(f"job {job.index}: {answer.status_code} {answer.text[:200]}")
                return
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def create_user(self, name: str) -> str:
        """A user, created before the faults (a taken name, 409, is one a lost answer created)."""
        while True:
            try:
                answer = self._client().post("/users/", json={"username": name})
            except httpx.HTTPError:
                answer = None
            if answer is not None and answer.status_code in (200, 201):
                return str(answer.json()["id"])
            if answer is not None and answer.status_code == 409:
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    users = self._client().get("/users").json()["users"]
                    for user in users:
                        if user["username"] == name:
                            return str(user["id"])
            if answer is not None and answer.status_code < 500:
                raise RuntimeError(f"creating user {name}: {answer.status_code} {answer.text}")
            time.sleep(0.5)

    def submit_workflow(self, workflow: Workflow) -> None:
        """Workflows take no Idempotency-Key: retried only when nothing can have been stored (no
        connection, or the gateway's 503 for being disconnected from NATS). Any other failure is
        left as it is; the accounting finds such a workflow in the log if it was stored after all."""
        deadline, pause = time.monotonic() + self.timeout_s, 0.2
        while time.monotonic() < deadline:
            with self.lock:
                self.attempts += 1
            try:
                answer = self._client().post("/workflows/", json=workflow.body)
            except httpx.ConnectError:
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            except httpx.HTTPError as error:
                workflow.answer = f"{type(error).__name__}"
                return
            if answer.status_code == 200:
                workflow.job_ids = [int(j) for j in answer.json()["job_ids"]]
                return
            workflow.answer = f"{answer.status_code} {answer.text[:200]}"
            if answer.status_code != 503:
                return
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


# --- the checks ----------------------------------------------------------------------------------


def read_ledger(ledger: Path) -> dict[int, list[tuple[str, int]]]:
    """Per job id, its ledger lines in order: (``start`` or ``end``, pid of that run's shell)."""
    runs: dict[int, list[tuple[str, int]]] = defaultdict(list)
    if not ledger.exists():
        return runs
    for line in ledger.read_text().splitlines():
        what, job_id, pid = line.split()
        runs[int(job_id)].append((what, int(pid)))
    return runs


def overlapping(lines: list[tuple[str, int]]) -> bool:
    """Whether a run started while an earlier one was still going (its ``end`` comes later). A run
    killed with its node writes no ``end``: it is gone, not overlapping."""
    open_runs: set[int] = set()
    for what, pid in lines:
        if what == "start":
            if open_runs:
                ended_later = {p for w, p in lines if w == "end"}
                if open_runs & ended_later:
                    return True
            open_runs.add(pid)
        else:
            open_runs.discard(pid)
    return False


async def _read_log(nats_url: str) -> list[tuple[int, str, ev.Event | None]]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(subjects.STREAM)
        out: list[tuple[int, str, ev.Event | None]] = []
        for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
            msg = await js.get_msg(subjects.STREAM, seq=seq)
            try:
                event: ev.Event | None = ev.decode(msg.data or b"")
            except ValueError:
                event = None
            out.append((seq, msg.subject or "", event))
        return out
    finally:
        await nc.close()


async def _rows(dsn: str, table: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        # row_to_json: every column as JSON, JSON columns compared by value rather than by text.
        rows = await conn.fetch(f"SELECT row_to_json(t)::text AS r FROM {table} t ORDER BY {TABLES[table]}")
        skip = TIME_OF_PROJECTION.get(table, frozenset())
        return [{k: v for k, v in json.loads(r["r"]).items() if k not in skip} for r in rows]
    finally:
        await conn.close()


async def _states(dsn: str) -> dict[int, tuple[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT job_id, state, restarts FROM jobs WHERE account = 'chaos'")
        return {int(r["job_id"]): (str(r["state"]), int(r["restarts"])) for r in rows}
    finally:
        await conn.close()


async def _position(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval("SELECT position FROM projector_positions WHERE name = 'projector'")
        return int(value or 0)
    finally:
        await conn.close()


async def _node_losses(nats_url: str) -> int:
    """How many NodeLost the log holds, counted by the server per subject (no message read)."""
    nc = await nats.connect(nats_url)
    try:
        lost = subjects.subject_for(ev.NodeLost(node="*"))
        info = await nc.jetstream().stream_info(subjects.STREAM, subjects_filter=lost)
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


async def _node_settled(nats_url: str, pid: int) -> bool:
    """Has the executor ``pid`` written the node's heartbeat, and the node registered after its last
    NodeLost (the log's own order)?"""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        beat = await (await js.key_value(subjects.HEARTBEATS_BUCKET)).get(subjects.heartbeat_key(NODE))
        if json.loads(beat.value or b"{}").get("pid") != pid:
            return False
        registration = subjects.subject_for(ev.NodeRegistered(node=NODE, cpus=1, memory_mb=1))
        registered = await js.get_last_msg(subjects.STREAM, registration)
        try:
            lost = await js.get_last_msg(subjects.STREAM, subjects.node_lost_of(NODE))
        except nats.js.errors.NotFoundError:
            return True
        return (registered.seq or 0) > (lost.seq or 0)
    except (nats.errors.Error, ValueError):
        return False
    finally:
        await nc.close()


async def _last_seq(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().stream_info(subjects.STREAM)).state.last_seq)
    finally:
        await nc.close()


async def _create_database(dsn: str, name: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlsplit(dsn)._replace(path=f"/{name}").geturl()


def _try(step: Callable[[], Any]) -> Any:
    """One probe against a server that may still be coming back: None when it is not there yet."""
    try:
        return step()
    except (OSError, asyncpg.PostgresError, nats.errors.Error, TimeoutError):
        return None


def rebuild_and_compare(up: Up, nats_url: str, dsn: str, report: Report, timeout_s: float) -> None:
    """``conductor projector --rebuild`` into a second database of the same server (the live read
    models stay as the running projector left them), then every table compared row by row."""
    last = asyncio.run(_last_seq(nats_url))
    _wait(lambda: (_try(lambda: asyncio.run(_position(dsn))) or 0) >= last, timeout_s, "live read models caught up")
    rebuilt_dsn = asyncio.run(_create_database(dsn, "conductor_rebuild"))
    env = {k: v for k, v in up.env.items() if k != "CONDUCTOR_METRICS_PORT"}
    env |= {"NATS_URL": nats_url, "DATABASE_URL": rebuilt_dsn}
    with open(up.root / "rebuild.log", "ab") as log:
        rebuild = subprocess.Popen([sys.executable, "-m", "conductor", "projector", "--rebuild"], env=env, stderr=log)
    try:
        _wait(
            lambda: (_try(lambda: asyncio.run(_position(rebuilt_dsn))) or 0) >= last, timeout_s, "the rebuild caught up"
        )
    finally:
        rebuild.send_signal(signal.SIGINT)
        rebuild.wait(60)
    for table in TABLES:
        live, rebuilt = asyncio.run(_rows(dsn, table)), asyncio.run(_rows(rebuilt_dsn, table))
        report.rows_compared[table] = len(live)
        diffs = _diff(live, rebuilt, TABLES[table].split(", "))
        if diffs:
            report.rebuild_diffs[table] = diffs


def _diff(live: list[dict[str, Any]], rebuilt: list[dict[str, Any]], key: list[str]) -> list[str]:
    def keyed(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
        return {tuple(r[k] for k in key): r for r in rows}

    a, b = keyed(live), keyed(rebuilt)
    out = [f"{k}: only in the live read models" for k in a.keys() - b.keys()]
    out += [f"{k}: only in the rebuild" for k in b.keys() - a.keys()]
    for k in sorted(a.keys() & b.keys(), key=str):
        changed = {c: (a[k][c], b[k].get(c)) for c in a[k] if a[k][c] != b[k].get(c)}
        if changed:
            out.append(f"{k}: {changed} (live, rebuilt)")
    return out


def account(
    jobs: list[Job],
    flows: list[Workflow],
    up: Up,
    nats_url: str,
    dsn: str,
    ledger: Path,
    report: Report,
    timeout_s: float,
) -> None:
    # Every acknowledged job, by id, with the name it was submitted under.
    acked = {job.job_id: str(job.body["job"]["name"]) for job in jobs if job.job_id is not None}
    for flow in flows:
        acked |= {j: str(spec["name"]) for j, spec in zip(flow.job_ids, flow.body["jobs"], strict=True)}
    report.acknowledged = len(acked)
    report.workflows = f"{sum(1 for f in flows if f.job_ids)} of {len(flows)} acknowledged"
    report.workflows_unanswered = [f"workflow {f.index}: {f.answer}" for f in flows if not f.job_ids]
    report.given_up = [job.index for job in jobs if job.job_id is None]
    started = time.monotonic()

    def all_terminal() -> bool:
        states = _try(lambda: asyncio.run(_states(dsn))) or {}
        return all(states.get(job_id, ("?", 0))[0] in TERMINAL for job_id in acked)

    with contextlib.suppress(TimeoutError):
        _wait(all_terminal, timeout_s, "every acknowledged job terminal")
    report.durations["drain"] = time.monotonic() - started
    states = asyncio.run(_states(dsn))
    log = asyncio.run(_read_log(nats_url))
    submitted_at = {seq: e for seq, _, e in log if isinstance(e, ev.JobSubmitted) and e.account == "chaos"}
    # Jobs stored without an answer (a workflow whose answer was lost) must end too: checked alike.
    unacked = sorted(submitted_at.keys() - acked.keys())
    report.stored_without_acknowledgement = len(unacked)
    if unacked:
        with contextlib.suppress(TimeoutError):
            _wait(lambda: all(asyncio.run(_states(dsn)).get(j, ("?", 0))[0] in TERMINAL for j in unacked), 60, "")
        states = asyncio.run(_states(dsn))
    for job_id in sorted(acked.keys() | submitted_at.keys()):
        state = states.get(job_id, ("absent", 0))[0]
        if job_id in acked and (job_id not in submitted_at or submitted_at[job_id].name != acked[job_id]):
            report.lost.append(f"{job_id}: not in the log as the JobSubmitted of {acked[job_id]}")
        elif state not in TERMINAL:
            report.lost.append(f"{job_id}: {state}")
        else:
            report.terminal += 1
            report.states[state] += 1
    names = Counter(e.name for e in submitted_at.values())
    report.duplicate_submissions = sorted(name for name, n in names.items() if n > 1)
    # One outcome per run. The exceptions: a run the scheduler ended NODE_FAIL because its node was
    # declared lost, whose executor, back, reported its real end before it read of the loss: a late
    # report, which the fold and the read models ignore (the first outcome stands); and a requeue
    # job's run its executor reported NODE_FAIL, which the scheduler then ended FAILED instead of
    # requeuing it (CONDUCTOR_MAX_REQUEUES): the job's end, decided on that run's report.
    first: dict[tuple[int, int], tuple[str, ev.Event]] = {}
    again: Counter[tuple[int, int]] = Counter()
    for _, subject, e in log:
        if not isinstance(e, ev.TERMINAL_JOB_EVENTS):
            continue
        key = (e.job_id, e.run)
        if key not in first:
            first[key] = (subject, e)
            continue
        by, decided = first[key]
        lost = isinstance(decided, ev.JobFailed) and decided.node_fail and subjects.is_scheduler_subject(by)
        failed_under = isinstance(decided, ev.JobFailed) and decided.node_fail and not subjects.is_scheduler_subject(by)
        if lost and not subjects.is_scheduler_subject(subject):
            report.late_reports += 1
        elif failed_under and isinstance(e, ev.JobFailed) and subjects.is_scheduler_subject(subject):
            report.requeues_refused += 1
        else:
            again[key] += 1
    report.duplicate_outcomes = [f"job {j} run {r}: {n + 1}" for (j, r), n in again.items()]
    ledger_runs = read_ledger(ledger)
    for job_id, lines in sorted(ledger_runs.items()):
        starts = sum(1 for what, _ in lines if what == "start")
        restarts = states.get(job_id, ("?", 0))[1]
        if job_id not in submitted_at:
            report.ran_but_not_in_the_log.append(job_id)
        if restarts > 0:
            report.requeued.append(job_id)
            report.requeued_runs += starts
        elif starts > 1:
            report.run_twice.append(job_id)
        if overlapping(lines):
            report.overlapping.append(job_id)
    report.requeued += [j for j, (_, r) in states.items() if r > 0 and j not in ledger_runs]
    for job_id in acked:
        ended = any(what == "end" for what, _ in ledger_runs.get(job_id, []))
        if states.get(job_id, ("?", 0))[0] == "COMPLETED" and not ended:
            report.completed_without_running.append(job_id)
    started = time.monotonic()
    rebuild_and_compare(up, nats_url, dsn, report, timeout_s)
    report.durations["rebuild and compare"] = time.monotonic() - started


# --- the run -------------------------------------------------------------------------------------


def run(config: Config, say: Callable[[str], None] = print) -> Report:
    rng = random.Random(config.seed)
    report = Report(config.seed, config.rounds)
    say(f"chaos: seed {config.seed} (replay with --seed {config.seed} or CHAOS_SEED={config.seed})")
    config.root.mkdir(parents=True, exist_ok=True)
    begun = time.monotonic()
    up = Up(config.root, config.cpus)
    try:
        up.wait_ready(180)
        nats_url, dsn = up.nats_url, up.database_url
        up.start_standby(nats_url)
        report.durations["start"] = time.monotonic() - begun
        ledger = up.work / "ledger"
        jobs = workload(config, rng, up.work, ledger)
        submitter = Submitter(up.url, config.seed, config.submit_timeout_s)
        user_ids = [submitter.create_user(f"chaos-{config.seed}-u{k}") for k in range(3)]
        flows = workflows(config, rng, up.work, ledger, user_ids)
        plan = fault_plan(rng, config.rounds, config.each_fault_at_least)
        pauses = [rng.uniform(*config.pause_s) for _ in plan]
        say(f"chaos: {len(jobs)} jobs, faults in this order: {' '.join(plan)}")
        faults = Faults(up, nats_url, config.back_timeout_s)
        # Submits spread over the faults' span (pauses plus about 2 s per recovery), so that every
        # kind lands among running, pending and just-submitted jobs, and some submits meet it.
        spread_s = sum(pauses) + 2.0 * len(plan)
        chaos_started = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            for job in jobs:
                pool.submit(_paced, submitter.submit, job, chaos_started + spread_s * job.index / max(len(jobs), 1))
            for flow in flows:
                at = chaos_started + spread_s * (flow.index + 0.5) / len(flows)
                pool.submit(_paced, submitter.submit_workflow, flow, at)
            for kind, pause in zip(plan, pauses, strict=True):
                time.sleep(pause)
                at = time.monotonic() - chaos_started
                back, detail = faults.inject(kind)
                report.faults.append(Fault(kind, at, back, detail))
                shown = "NOT BACK" if back is None else f"back in {back:.1f}s"
                say(f"chaos: {at:6.1f}s killed {kind} {detail}: {shown}")
                if back is None:
                    break  # a part that does not come back ends the run: the report says which
            report.durations["faults"] = time.monotonic() - chaos_started
        report.durations["submits"] = time.monotonic() - chaos_started
        report.submits, report.refused = submitter.attempts, submitter.refused
        report.standby_led = up.standby_leaderships()
        account(jobs, flows, up, nats_url, dsn, ledger, report, config.drain_timeout_s)
    finally:
        up.stop()
    report.durations["total"] = time.monotonic() - begun
    for line in report.lines():
        say(line)
    return report


def _paced(submit: Callable[[T], None], item: T, at: float) -> None:
    time.sleep(max(0.0, at - time.monotonic()))
    submit(item)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.randomized", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12, help="kills (each kind at least twice when >= 12)")
    parser.add_argument("--jobs", type=int, default=400)
    seed = os.environ.get("CHAOS_SEED")
    parser.add_argument("--seed", type=int, default=int(seed) if seed else random.SystemRandom().randrange(10**6))
    parser.add_argument("--root", type=Path, default=None, help="folder for the system and its logs")
    args = parser.parse_args(argv)
    root = args.root or Path("var") / f"chaos-{args.seed}-{int(time.time())}"
    report = run(Config(rounds=args.rounds, jobs=args.jobs, seed=args.seed, root=root))
    print(f"logs and ledger in {root}")
    return 1 if report.defects else 0


if __name__ == "__main__":
    sys.exit(main())
