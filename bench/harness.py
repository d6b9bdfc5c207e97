"""What every benchmark needs: ``conductor up`` on its own nats-server and PostgreSQL, and the log's
timestamps of each job (benchmarks print figures; they assert nothing)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus, connect, next_batch, read_from
from conductor_platform.localservers import LocalServer, free_port, start_nats, start_postgres


def disk_note(path: Path) -> str:
    """A word on the file system under ``path`` when it makes figures depend on the minutes before:
    on ext4 without a journal every file made skips the inodes freed in the last 60-360 s
    (docs/benchmarks.md, "This machine's disk"), so a run right after another is slower."""
    dev = os.stat(path).st_dev
    try:
        uevent = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/uevent").read_text()
    except OSError:
        return ""
    name = next((line.split("=", 1)[1] for line in uevent.splitlines() if line.startswith("DEVNAME=")), "")
    journaled = any(p.name.startswith(f"{name}-") for p in Path("/proc/fs/jbd2").glob("*"))
    if name and Path(f"/proc/fs/ext4/{name}").exists() and not journaled:
        return "ext4 without a journal: figures drop when files were deleted in the minutes before (another run)"
    return ""


@dataclass
class BenchSystem:
    url: str
    nats: LocalServer
    postgres: LocalServer
    up: subprocess.Popen[bytes]
    work: Path
    # Executors of nodes beyond ``conductor up``'s own, on this machine (``extra_executors``).
    executors: list[subprocess.Popen[bytes]] = field(default_factory=list)


@asynccontextmanager
async def conductor_up(node_cpus: int, memory: str = "64G", extra_executors: int = 0) -> AsyncIterator[BenchSystem]:
    """``extra_executors``: nodes ``bench-2``... each with an executor process of its own beside
    ``conductor up``'s node ``bench``, each offering ``node_cpus`` CPUs."""
    # The jobs' folder beside the var folder, not in it: conductor up protects its var folder, and
    # every job working there failed at its start (the bench counted those failures as completions).
    with (
        tempfile.TemporaryDirectory(prefix="conductor-bench-") as tmp,
        tempfile.TemporaryDirectory(prefix="conductor-bench-work-") as work,
    ):
        var = Path(tmp)
        nats_server = start_nats(var / "nats")
        postgres = start_postgres(var / "postgres")
        port = free_port()
        env = os.environ | {"NATS_URL": nats_server.url, "DATABASE_URL": postgres.url, "CONDUCTOR_LOG_LEVEL": "WARNING"}
        argv = [sys.executable, "-m", "conductor", "up", "--var-dir", str(var), "--port", str(port)]
        argv += ["--node", "bench", "--cpus", str(node_cpus), "--memory", memory]
        up = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        executors = []
        for n in range(2, 2 + extra_executors):
            node_env = env | {"CONDUCTOR_STATE_DIR": str(var / f"executor-{n}"), "CONDUCTOR_STOP_JOBS_ON_EXIT": "true"}
            node_argv = [sys.executable, "-m", "conductor_executor", "--node", f"bench-{n}"]
            node_argv += ["--cpus", str(node_cpus), "--memory", memory]
            executors.append(subprocess.Popen(node_argv, env=node_env, stderr=subprocess.DEVNULL))
        url = f"http://127.0.0.1:{port}"
        try:
            await _until_registered(url, 1 + extra_executors, [up, *executors])
            yield BenchSystem(url, nats_server, postgres, up, Path(work), executors)
        finally:
            for process in [*executors, up]:
                process.send_signal(signal.SIGINT)
            try:
                for process in [*executors, up]:
                    try:
                        process.wait(60)
                    except subprocess.TimeoutExpired:  # stuck: its servers must still go below
                        print(f"bench: pid {process.pid} did not stop within 60 s; killed", file=sys.stderr)
                        process.kill()
                        process.wait()
            finally:
                postgres.stop()
                nats_server.stop()


async def _until_registered(url: str, nodes: int, processes: list[subprocess.Popen[bytes]]) -> None:
    """Until the read model lists ``nodes`` nodes; raises when a process ended first or after 60 s: a
    figure measured on fewer nodes than asked for would be printed as if it had them."""
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(300):
            if ended := [p.pid for p in processes if p.poll() is not None]:
                raise RuntimeError(f"bench: process(es) {ended} ended before {nodes} node(s) registered")
            try:
                if len((await client.get("/nodes")).json()["nodes"]) >= nodes:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"bench: {nodes} node(s) did not all register within 60 s")


@dataclass
class Timeline:
    """Event times (seconds) of each job, from the log itself."""

    submitted: dict[int, float] = field(default_factory=dict)
    placed: dict[int, float] = field(default_factory=dict)
    started: dict[int, float] = field(default_factory=dict)
    ended: dict[int, float] = field(default_factory=dict)
    outcomes: dict[int, str] = field(default_factory=dict)  # each ended job's terminal event type

    def not_completed(self) -> dict[str, int]:
        """How many jobs ended otherwise than COMPLETED, by how: a figure of completions over those
        would measure failures."""
        counts: dict[str, int] = {}
        for kind in self.outcomes.values():
            if kind != "JobCompleted":
                counts[kind] = counts.get(kind, 0) + 1
        return counts


_OUTCOME_TOKENS = frozenset(t.removeprefix("Job").lower() for t in ev.TERMINAL_TYPES)


async def outcomes_stored(bus: Bus) -> int:
    """How many job outcomes the log holds, from the stream's per-subject counts (no message is read)."""
    total = 0
    for pattern in (f"{subjects.ROOT}.exec.*.job.*", f"{subjects.ROOT}.sched.job.*.*"):
        info = await bus.js.stream_info(bus.stream, subjects_filter=pattern)
        counts = info.state.subjects or {}
        total += sum(n for subject, n in counts.items() if subject.rsplit(".", 1)[-1] in _OUTCOME_TOKENS)
    return total


async def follow(nats_url: str, ids: set[int], deadline_s: float, *, outcomes: int | None = None) -> Timeline:
    """Read the log from the start until every job of ``ids`` has ended (or ``deadline_s``).

    With ``outcomes`` (the number of job outcomes the whole log will hold when the run is over: a
    system of the benchmark's own), it first waits for them by polling counts and reads the log only
    then: decoding every event while the run goes on took ~1 ms of CPU per job from the two cores the
    system under test has. The times are the events' own, so they are the same either way."""
    bus = await connect(nats_url, name="bench")
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + deadline_s
    while outcomes is not None and loop.time() < stop_at:
        if await outcomes_stored(bus) >= outcomes:
            break
        await asyncio.sleep(0.25)
    sub = await read_from(bus, 1)
    times = Timeline()
    while len(times.ended) < len(ids) and loop.time() < stop_at:
        for msg in await next_batch(sub, 1000, wait_s=1.0):
            event = ev.decode(msg.data)
            at = event.occurred_at.timestamp()
            seq = msg.metadata.sequence.stream
            if isinstance(event, ev.JobSubmitted) and seq in ids:
                times.submitted[seq] = at
            elif isinstance(event, ev.JobPlaced) and event.job_id in ids:
                times.placed[event.job_id] = at
            elif isinstance(event, ev.JobStarted) and event.job_id in ids:
                times.started[event.job_id] = at
            elif isinstance(event, ev.TERMINAL_JOB_EVENTS) and event.job_id in ids:
                times.ended[event.job_id] = at
                times.outcomes[event.job_id] = event.type
                if event.started_at is not None:  # a short run: no JobStarted, its start is here
                    times.started[event.job_id] = event.started_at.timestamp()
    await bus.close()
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
