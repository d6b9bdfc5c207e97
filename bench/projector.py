"""Projector benchmark (not a test): how fast the projector folds the log into PostgreSQL, live and
in a rebuild, what it costs in CPU, and whether its memory stays flat.

    python bench/projector.py [--jobs 50000] [--public | --no-public] [--live-rate 10000]

It starts its own nats-server and PostgreSQL, fills the stream with ``--jobs`` finished jobs published
straight to it (JobSubmitted, a Priority and a Resources reason for every other job, JobPlaced,
JobStarted, JobCompleted: five events a job on average), then runs ``conductor projector`` as a child
process and times:

(a) catch-up: the live projector (the public subjects on, as deployed, unless ``--no-public``)
    reading the whole log from an empty read model;
(b) rebuild: ``conductor projector --rebuild`` over the same log;
(c) lag: the live projector following ``--live-rate`` events/s published for ``--live-seconds``,
    sampled every 50 ms as (last stream sequence - projected position).

For each: events/s, the projector's CPU seconds (and nats-server's and PostgreSQL's), its RSS once it
had applied its first batch and at the end. Figures are noisy on a shared machine: compare CPU
seconds per event, and runs side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from conductor_contracts import events as ev
from conductor_contracts import public, subjects
from conductor_contracts.states import PendingReason
from conductor_platform.bus import Bus, connect
from conductor_platform.localservers import start_nats, start_postgres

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live children (PostgreSQL's postmaster and its backends)."""
    total = cpu_s(pid)
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            ppid = int((child / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            total += cpu_s(int(child.name))
    return total


def rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE / 2**20
    except OSError:
        return 0.0


def peak_rss_mb(pid: int) -> float:
    """The most the process ever held (VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def submission(i: int) -> ev.JobSubmitted:
    """A trivial job's submission, its name and account varied by ``i`` (other benches use it too)."""
    return ev.JobSubmitted(
        name=f"bench-{i % 100}", account=f"acct{i % 10}", partition="default", ntasks_per_node=1, cpus_per_task=1,
        cpus=1, memory_mb=1, time_limit_s=60, working_directory="/tmp", standard_output="", standard_error=None,
        script="true",
    )  # fmt: skip


def _job_events(i: int, job: int) -> list[tuple[ev.Event, bool]]:
    """One finished job's events, and whether the scheduler wrote each (its subject says so)."""
    out: list[tuple[ev.Event, bool]] = [(submission(i), False)]
    if i % 2:  # a queued job: told it waits on its priority, then on resources
        out.append((ev.JobReasonChanged(job_id=job, reason=PendingReason.PRIORITY.value), True))
        out.append((ev.JobReasonChanged(job_id=job, reason=PendingReason.RESOURCES.value), True))
    out += [
        (ev.JobPlaced(job_id=job, node="n", cores=(i % 64,), memory_mb=1), True),
        (ev.JobStarted(job_id=job, node="n", pid=1000 + i % 30000), False),
        (ev.JobCompleted(job_id=job, node="n"), False),
    ]
    return out


class Filler:
    """Publishes jobs without awaiting each ack (one connection keeps the order, so each job id, the
    sequence of its JobSubmitted, is known in advance)."""

    def __init__(self, bus: Bus) -> None:
        self.bus, self.seq, self.jobs = bus, 0, 0

    async def node(self) -> None:
        await self.bus.nc.publish(subjects.subject_for(ev.NodeRegistered(node="n", cpus=64, memory_mb=1 << 20)),
                                  ev.encode(ev.NodeRegistered(node="n", cpus=64, memory_mb=1 << 20)))  # fmt: skip
        self.seq += 1

    async def jobs_(self, count: int) -> None:
        for _ in range(count):
            job = self.seq + 1
            for event, by_scheduler in _job_events(self.jobs, job):
                await self.bus.nc.publish(subjects.subject_for(event, by_scheduler=by_scheduler), ev.encode(event))
                self.seq += 1
            self.jobs += 1
            if self.jobs % 1000 == 0:
                await self.bus.nc.flush()
        await self.bus.nc.flush()

    async def stored(self) -> None:
        """Until the server has stored everything published (shortly after the flush)."""

        async def all_stored() -> bool:
            return (await self.bus.js.stream_info(self.bus.stream)).state.last_seq >= self.seq

        await until(all_stored, 0.05)


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    started: float
    cpu0: float
    nats0: float
    pg0: float


class Projector:
    def __init__(
        self, nats_url: str, pg_url: str, nats_pid: int, pg_pid: int, public_subjects: bool, log: Path
    ) -> None:
        self.env = os.environ | {
            "NATS_URL": nats_url,
            "DATABASE_URL": pg_url,
            "CONDUCTOR_LOG_LEVEL": "WARNING",
            "CONDUCTOR_PUBLIC_SUBJECTS": "true" if public_subjects else "false",
        }
        self.nats_pid, self.pg_pid = nats_pid, pg_pid
        self.running: list[Run] = []
        self.log = log
        self.profiles: Path | None = None

    def start(self, *args: str) -> Run:
        cmd = [sys.executable, "-m", "conductor_projector", *args]
        pg0, nats0 = tree_cpu_s(self.pg_pid), cpu_s(self.nats_pid)
        with self.log.open("ab") as out:
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        run = Run(proc, time.perf_counter(), 0.0, nats0, pg0)
        self.running.append(run)
        if self.profiles is not None:  # py-spy, sampling the projector for as long as it runs
            name = "rebuild" if "--rebuild" in args else "live"
            profile = self.profiles / f"{name}.txt"
            # --gil: only the samples that hold the GIL, close to where the CPU goes (not the waits).
            spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(proc.pid), "--format", "raw"]
            subprocess.Popen(
                [*spy, "--gil", "-o", str(profile), "--rate", "250"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        return run

    def stop(self, run: Run) -> None:
        if run.proc.poll() is not None:
            return
        run.proc.send_signal(signal.SIGINT)
        try:
            run.proc.wait(30)
        except subprocess.TimeoutExpired:
            run.proc.kill()
            run.proc.wait()


async def until(check: Callable[[], Awaitable[bool]], every_s: float) -> None:
    """Polls ``check`` (a server's state, which no event of ours is told of) until it holds."""
    done = await check()
    while not done:
        await asyncio.sleep(every_s)
        done = await check()


async def position(pg: asyncpg.Pool) -> int:
    try:
        value = await pg.fetchval("SELECT position FROM projector_positions WHERE name = 'projector'")
    except asyncpg.UndefinedTableError:
        return 0
    return int(value or 0)


async def public_reached(bus: Bus) -> int:
    try:
        info = await bus.js.stream_info(public.STREAM)
    except Exception:
        return 0
    if not info.state.last_seq:
        return 0
    last = await bus.js.get_msg(public.STREAM, seq=info.state.last_seq)
    return int((last.headers or {}).get(public.SEQ_HEADER, 0))


async def _below(pg: asyncpg.Pool, target: int) -> bool:
    return await position(pg) < target


async def _reached(pg: asyncpg.Pool, target: int) -> bool:
    return await position(pg) >= target


async def _public_reached(bus: Bus, target: int) -> bool:
    return await public_reached(bus) >= target


async def catch_up(
    what: str, projector: Projector, run: Run, pg: asyncpg.Pool, target: int, *, reset_first: bool = False
) -> None:
    """Until the projector's position reaches ``target`` (after it went back, with ``reset_first``);
    prints its figures."""
    if reset_first:
        await until(lambda: _below(pg, target), 0.01)
    first_at: float | None = None
    first_pos = 0
    cpu_first = rss_first = rss_half = 0.0
    while (reached := await position(pg)) < target:
        if reached and first_at is None and reached < target:
            first_at, first_pos, rss_first = time.perf_counter(), reached, rss_mb(run.proc.pid)
            cpu_first = cpu_s(run.proc.pid)
        if reached >= target // 2 and not rss_half:
            rss_half = rss_mb(run.proc.pid)
        if run.proc.poll() is not None:
            raise RuntimeError(f"the projector exited with {run.proc.returncode}")
        await asyncio.sleep(0.05)
    done = time.perf_counter()
    cpu = cpu_s(run.proc.pid)
    nats = cpu_s(projector.nats_pid) - run.nats0
    pg_cpu = tree_cpu_s(projector.pg_pid) - run.pg0
    whole = done - run.started
    print(f"{what}: {target} events in {whole:.1f} s from the process's start: {target / whole:,.0f} events/s")
    if first_at is not None and done > first_at:
        rate = (target - first_pos) / (done - first_at)
        # Without the start (imports, migrations, the reset): the cost of each event alone.
        per_event = (cpu_s(run.proc.pid) - cpu_first) / (target - first_pos) * 1e6
        print(
            f"  from its first commit (seq {first_pos}): {rate:,.0f} events/s, projector CPU {per_event:.1f} us/event"
        )
    print(
        f"  CPU seconds: projector {cpu:.1f} ({cpu / target * 1e6:.1f} us/event), nats {nats:.1f}, postgres {pg_cpu:.1f}"
    )
    print(
        f"  projector RSS: {rss_first:.0f} MB after its first batch, {rss_half:.0f} MB half-way,"
        f" {rss_mb(run.proc.pid):.0f} MB at the end"
        f" (peak {peak_rss_mb(run.proc.pid):.0f} MB)"
    )


async def live(projector: Projector, filler: Filler, run: Run, pg: asyncpg.Pool, rate: float, seconds: float) -> None:
    """Publish ``rate`` events/s for ``seconds`` while the projector follows; print its lag."""
    lags: list[int] = []
    sampling = True

    async def sample() -> None:
        while sampling:
            lags.append(max(0, filler.seq - await position(pg)))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    cpu0, rss0 = cpu_s(run.proc.pid), rss_mb(run.proc.pid)
    per_job = 5
    begin = time.perf_counter()
    first = filler.seq
    while (elapsed := time.perf_counter() - begin) < seconds:
        due = int(elapsed * rate / per_job) - (filler.seq - first) // per_job
        if due > 0:
            await filler.jobs_(due)
        await asyncio.sleep(0.01)
    published = time.perf_counter()
    await filler.stored()
    await until(lambda: _reached(pg, filler.seq), 0.01)
    drained = time.perf_counter() - published
    sampling = False
    await sampler
    events = filler.seq - first
    lags.sort()
    cpu = cpu_s(run.proc.pid) - cpu0
    print(f"live: {events} events at {events / seconds:,.0f} events/s offered for {seconds:.0f} s")
    print(
        f"  lag (events behind the stream, every 50 ms): p50 {lags[len(lags) // 2]}, "
        f"p99 {lags[int(len(lags) * 0.99)]}, max {lags[-1]}; caught up {drained * 1000:.0f} ms after the last publish"
    )
    print(
        f"  projector CPU {cpu:.1f} s ({cpu / events * 1e6:.1f} us/event), RSS {rss0:.0f} -> {rss_mb(run.proc.pid):.0f} MB"
    )


def fold_only(jobs: int) -> None:
    """The projector's own work on the bench's events without NATS or PostgreSQL: decode, operations
    (with their checks), the fold into rows. CPU microseconds per event, the best of five runs: far
    steadier on a shared machine than the whole projector's figures, which it is a part of."""
    from conductor_projector.operations import decode, fold_jobs
    from conductor_projector.sink import _JOB_COLUMNS, _operations

    data: list[tuple[int, str, bytes]] = []
    for i in range(jobs):
        job = len(data) + 1
        for event, by_scheduler in _job_events(i, job):
            data.append((len(data) + 1, subjects.subject_for(event, by_scheduler=by_scheduler), ev.encode(event)))
    best: dict[str, float] = {}
    for _ in range(5):
        spent = dict.fromkeys(("decode", "operations", "fold"), 0.0)
        for first in range(0, len(data), 2000):  # in the projector's batches, each dropped once applied
            t0 = time.process_time()
            decoded = [(seq, decode(subject, raw)) for seq, subject, raw in data[first : first + 2000]]
            t1 = time.process_time()
            ops = [op for seq, event in decoded if isinstance(event, ev.EventBase) for op in _operations(seq, event)]
            t2 = time.process_time()
            fold_jobs({}, ops, _JOB_COLUMNS)
            t3 = time.process_time()
            spent["decode"] += t1 - t0
            spent["operations"] += t2 - t1
            spent["fold"] += t3 - t2
        spent["all"] = sum(spent.values())
        best = {what: min(best.get(what, seconds), seconds) for what, seconds in spent.items()}
    print(
        f"fold only: {len(data)} events ({jobs} jobs), CPU us/event, best of 5: "
        + ", ".join(f"{what} {seconds / len(data) * 1e6:.2f}" for what, seconds in best.items())
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--public", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--live-rate", type=float, default=10_000, help="events/s in the lag phase (0: none)")
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--skip-rebuild", action="store_true")
    parser.add_argument("--rebuild-only", action="store_true", help="only the rebuild (b): no catch-up, no lag phase")
    parser.add_argument("--profile", help="a folder: py-spy records each projector run there (raw format)")
    parser.add_argument("--log", help="where the projector's own log goes (default: the temporary folder)")
    parser.add_argument(
        "--fold-only",
        action="store_true",
        help="no servers: the CPU of decoding the jobs' events and making their rows, in this process",
    )
    args = parser.parse_args()
    if args.fold_only:
        fold_only(args.jobs)
        return
    with tempfile.TemporaryDirectory(prefix="conductor-projector-bench-") as tmp:
        nats_server = start_nats(Path(tmp) / "nats")
        postgres = start_postgres(Path(tmp) / "postgres")
        projector: Projector | None = None
        try:
            bus = await connect(nats_server.url, name="bench")
            filler = Filler(bus)
            t0 = time.perf_counter()
            await filler.node()
            await filler.jobs_(args.jobs)
            await filler.stored()
            print(
                f"SCNS-Conductor projector benchmark: {filler.seq} events ({args.jobs} jobs) in the log, "
                f"published in {time.perf_counter() - t0:.1f} s; public subjects {'on' if args.public else 'off'}"
            )
            pg = await asyncpg.create_pool(postgres.url, min_size=1, max_size=3)
            log = Path(args.log) if args.log else Path(tmp) / "projector.log"
            projector = Projector(
                nats_server.url, postgres.url, nats_server.process.pid, postgres.process.pid, args.public, log
            )
            if args.profile:
                projector.profiles = Path(args.profile)
                projector.profiles.mkdir(parents=True, exist_ok=True)
            if not args.rebuild_only:
                run = projector.start()
                await catch_up("catch-up (live projector, empty read model)", projector, run, pg, filler.seq)
                if args.public:
                    t_pub = time.perf_counter()
                    await until(lambda: _public_reached(bus, filler.seq), 0.05)
                    print(f"  public subjects complete {time.perf_counter() - t_pub:.1f} s after the read model")
                if args.live_rate > 0:
                    await live(projector, filler, run, pg, args.live_rate, args.live_seconds)
                projector.stop(run)
            if not args.skip_rebuild:
                run = projector.start("--rebuild")
                await catch_up(
                    "rebuild (conductor projector --rebuild)",
                    projector,
                    run,
                    pg,
                    filler.seq,
                    reset_first=not args.rebuild_only,
                )
                projector.stop(run)
            await pg.close()
            await bus.close()
        finally:
            for started in projector.running if projector is not None else []:
                started.proc.kill()
            postgres.stop()
            nats_server.stop()


if __name__ == "__main__":
    asyncio.run(main())
