"""Scale simulation (not a test): the real scheduler, as its own process (``python -m
conductor_scheduler``), placing jobs on many simulated nodes over its own nats-server.

    python bench/scale.py                       # 1,000 nodes x 32 cores, 200,000 jobs (a few minutes)
    python bench/scale.py --jobs 1000000        # the C1M-sized run
    python bench/scale.py --queue-depth 0       # the same without pending-reason events

The nodes register by publishing NodeRegistered and keep their heartbeat keys fresh; a simulated
executor answers each JobPlaced with JobStarted and, ``--run-s`` later (± half), JobCompleted, all
published pipelined. Jobs (one CPU each) are published straight to the stream, pipelined: the
submitter keeps about ``--shallow`` jobs pending for the first 40% of the jobs, then about
``--deep`` until every job is submitted, and the queue drains. Printed: placements/s over the whole
run, the placement rate with ~1k and ~100k pending, the scheduler's CPU and RSS at the start, its
peak and at the end, and what the log holds (the pending-reason events' share).

Placement times are the JobPlaced events' own (the scheduler's clock); the pending depth at a moment
is the jobs submitted by then less those placed.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from simcluster import Executor, heartbeats, register

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus, connect
from conductor_platform.localservers import free_port, start_nats
from conductor_scheduler import memtrace

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def runnable_wait_s(pid: int) -> float:
    """How long the process was ready to run but waited for a core (the machine is shared)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def memory_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Snapshots:
    """tracemalloc snapshots the scheduler writes on SIGUSR1 (memtrace.py), by label, in order."""

    pid: int
    folder: Path
    labels: list[str] = field(default_factory=list)

    async def take(self, label: str) -> None:
        os.kill(self.pid, signal.SIGUSR1)
        path = self.folder / f"scheduler-{len(self.labels) + 1}.tracemalloc"
        for _ in range(3000):  # written whole when it has its name (memtrace renames it)
            if path.exists():
                break
            await asyncio.sleep(0.2)
        self.labels.append(label)
        print(f"  tracemalloc snapshot '{label}': {path}", flush=True)

    def report(self, top: int = 15) -> None:
        loaded = [
            tracemalloc.Snapshot.load(str(self.folder / f"scheduler-{i + 1}.tracemalloc"))
            for i in range(len(self.labels))
        ]
        for label, snap in zip(self.labels, loaded, strict=True):
            print(f"traced at '{label}': {sum(s.size for s in snap.statistics('filename')) / 1e6:.1f} MB")
        for a, b in ((0, len(loaded) - 1), (1, len(loaded) - 1)):
            if a >= b:
                continue
            print(f"grown from '{self.labels[a]}' to '{self.labels[b]}' (by line):")
            for stat in loaded[b].compare_to(loaded[a], "lineno")[:top]:
                print(f"  {stat}")


def _job() -> ev.JobSubmitted:
    return ev.JobSubmitted(
        name="s", account="bench", partition="default", ntasks_per_node=1, cpus_per_task=1, cpus=1, memory_mb=1,
        time_limit_s=3600, working_directory="/tmp", standard_output="", standard_error=None, script="true",
    )  # fmt: skip


@dataclass
class Submitter:
    bus: Bus
    executor: Executor
    jobs: int
    submitted: int = 0
    deep_from: float = 0.0  # when the target depth went from shallow to deep
    deep_at: float = 0.0  # when the deep queue was all submitted (the scheduler has it to fold then)
    done_at: float = 0.0
    timeline: tuple[list[float], list[int]] = ([], [])  # (time, jobs submitted by then)

    async def run(self, shallow: int, deep: int) -> None:
        """Keep about ``shallow`` jobs pending, then about ``deep``, without awaiting any ack."""
        switch = int(self.jobs * 0.4)
        while self.submitted < self.jobs:
            if self.submitted >= switch and not self.deep_from:
                self.deep_from = time.time()
            target = deep if self.deep_from else shallow
            wanted = min(target - (self.submitted - len(self.executor.placed_at)), self.jobs - self.submitted, 5000)
            if self.deep_from and not self.deep_at and wanted < 5000:
                self.deep_at = time.time()
            if wanted > 0:
                data = ev.encode(_job())  # one encoding per chunk: the harness's CPU is not what we measure
                for _ in range(wanted):
                    await self.bus.nc.publish(subjects.SUBMITTED, data)
                await self.bus.nc.flush()
                self.submitted += wanted
                self.timeline[0].append(time.time())
                self.timeline[1].append(self.submitted)
            await asyncio.sleep(0.01 if wanted < 5000 else 0)
        self.done_at = time.time()

    def by(self, at: float) -> int:
        times, counts = self.timeline
        i = bisect.bisect_right(times, at)
        return counts[i - 1] if i else 0


def band_rate(placed: list[float], windows: list[tuple[float, float]]) -> tuple[float, float]:
    """Placements per second within ``windows`` (start, end), and the seconds they cover."""
    count, seconds = 0, 0.0
    for start, end in windows:
        count += bisect.bisect_left(placed, end) - bisect.bisect_left(placed, start)
        seconds += end - start
    return (count / seconds if seconds else float("nan")), seconds


def windows(
    placed: list[float], submitter: Submitter, start: float, end: float, keep: range
) -> list[tuple[float, float]]:
    """One-second windows between ``start`` and ``end`` whose pending depth at their start is in ``keep``."""
    kept = []
    t = start
    while t + 1 <= end:
        depth = submitter.by(t) - bisect.bisect_left(placed, t)
        if depth in keep:
            kept.append((t, t + 1))
        t += 1
    return kept


async def count(bus: Bus, subject: str) -> int:
    """Messages in the stream on ``subject`` (a consumer's pending count: nothing is read)."""
    name = f"count-{uuid.uuid4().hex[:8]}"
    config = ConsumerConfig(
        name=name, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, filter_subject=subject
    )
    info = await bus.js.add_consumer(bus.stream, config=config)
    await bus.js.delete_consumer(bus.stream, name)
    return int(info.num_pending or 0)


async def settle(client: httpx.AsyncClient, port: int, idle_s: float = 12.0, limit_s: float = 120.0) -> float:
    """Wait until the scheduler's gauges show no job left (every end folded), then ``idle_s`` more
    (longer than the scheduler waits between two givings back of free memory: allocator.py); the
    seconds it took."""
    started = time.time()
    while time.time() - started < limit_s:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        jobs = [line for line in text.splitlines() if line.startswith("conductor_jobs{")]
        if all(float(line.split()[-1]) == 0 for line in jobs):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(idle_s)
    return time.time() - started


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--cores", type=int, default=32)
    parser.add_argument("--run-s", type=float, default=2.0, help="a job's simulated run time (± half)")
    parser.add_argument("--shallow", type=int, default=1000)
    parser.add_argument("--deep", type=int, default=100_000)
    parser.add_argument("--queue-depth", type=int, default=100, help="the scheduler's CONDUCTOR_QUEUE_DEPTH")
    parser.add_argument("--log-level", default="WARNING", help="the scheduler's (INFO logs every placement)")
    parser.add_argument("--scheduler-path", default="", help="a folder put first on the scheduler's PYTHONPATH (A/B)")
    parser.add_argument("--keep", default="", help="keep the scheduler's log in this file")
    parser.add_argument("--profile", default="", help="py-spy's profile of the scheduler, in this file (raw format)")
    parser.add_argument(
        "--tracemalloc",
        default="",
        help="trace the scheduler's allocations (several times slower) and compare snapshots taken at the start, "
        "when the deep queue begins and at the end; they are kept in this folder",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conductor-scale-") as tmp:
        server = start_nats(Path(tmp) / "nats")
        metrics_port = free_port()
        env = os.environ | {
            "NATS_URL": server.url,
            "CONDUCTOR_LOG_LEVEL": args.log_level,
            "CONDUCTOR_QUEUE_DEPTH": str(args.queue_depth),
            "CONDUCTOR_METRICS_PORT": str(metrics_port),
        }
        if args.tracemalloc:
            env[memtrace.ENV] = str(Path(args.tracemalloc).resolve())
        if args.scheduler_path:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (args.scheduler_path, env.get("PYTHONPATH", "")) if p)
        log = open(args.keep or Path(tmp) / "scheduler.log", "wb")  # noqa: SIM115 - the child writes it
        scheduler = subprocess.Popen([sys.executable, "-m", "conductor_scheduler"], env=env, stdout=log, stderr=log)
        stop = asyncio.Event()
        profiler: subprocess.Popen[bytes] | None = None
        try:
            bus = await connect(server.url, name="bench-scale")
            registrations = await register(bus, args.nodes, args.cores, memory_mb=args.cores * 4096)
            beating = asyncio.create_task(heartbeats(bus, registrations, 5.0, stop))
            await asyncio.sleep(3)  # the scheduler folds the registrations and idles
            pid = scheduler.pid
            cpu0, rss0, wait0 = cpu_s(pid), memory_mb(pid), runnable_wait_s(pid)
            snapshots = Snapshots(pid, Path(args.tracemalloc)) if args.tracemalloc else None
            if snapshots is not None:
                await snapshots.take("start")
            nats_cpu0, own_cpu0 = cpu_s(server.process.pid), time.process_time()
            print(
                f"SCNS-Conductor scale simulation: {args.nodes} nodes x {args.cores} cores, {args.jobs} one-CPU jobs "
                f"of {args.run_s:g} s (± half), queue depth {args.queue_depth}"
            )
            if args.profile:  # from here on: the jobs' part of the run, not the start
                spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--format", "raw"]
                spy += ["-o", args.profile, "--rate", "50", "--nonblocking"]
                profiler = subprocess.Popen(spy, stdout=subprocess.DEVNULL)
            executor = Executor(bus, args.run_s)
            following = asyncio.create_task(executor.follow(stop))
            submitter = Submitter(bus, executor, args.jobs)
            started = time.time()
            submitting = asyncio.create_task(submitter.run(args.shallow, args.deep))
            peak = rss0
            last_print = started
            while executor.completed < args.jobs:
                await asyncio.sleep(0.5)
                if scheduler.poll() is not None:
                    raise RuntimeError(f"the scheduler exited ({scheduler.returncode})")
                peak = max(peak, memory_mb(pid))
                if snapshots is not None and submitter.deep_from and "deep begins" not in snapshots.labels:
                    await snapshots.take("deep begins")
                if time.time() - last_print >= 15:
                    last_print = time.time()
                    placed = len(executor.placed_at)
                    print(
                        f"  {last_print - started:6.0f} s: submitted {submitter.submitted}, placed {placed}, "
                        f"completed {executor.completed}, pending {submitter.submitted - placed}, "
                        f"scheduler RSS {memory_mb(pid):.0f} MB",
                        flush=True,
                    )
            await submitting
            cpu1, rss1, wait1 = cpu_s(pid), memory_mb(pid), runnable_wait_s(pid)
            peak = max(peak, memory_mb(pid, "VmHWM"))
            nats_cpu1, own_cpu1 = cpu_s(server.process.pid), time.process_time()
            async with httpx.AsyncClient() as client:
                scraped = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
                settled_s = await settle(client, metrics_port)
            rss_settled = memory_mb(pid)
            if snapshots is not None:
                await snapshots.take("end")
            reasons = await count(bus, "conductor.sched.job.*.reason")
            decisions = await count(bus, subjects.SCHEDULER_ALL)
            total = (await bus.js.stream_info(bus.stream)).state.last_seq
            stop.set()
            await asyncio.gather(following, beating)
            await bus.close()
        finally:
            stop.set()
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(60)
            scheduler.terminate()
            scheduler.wait(30)
            log.close()
            server.stop()

    placed_at = sorted(executor.placed_at)
    first, last = placed_at[0], placed_at[-1]
    shallow = windows(placed_at, submitter, first, submitter.deep_from, range(0, 3 * args.shallow))
    # The deep queue arrives as one burst, folded before the next decision: its placements are
    # measured from the first one after it (the burst's folding is intake, printed apart).
    caught_up = placed_at[min(bisect.bisect_right(placed_at, submitter.deep_at), len(placed_at) - 1)]
    deep = windows(placed_at, submitter, caught_up, last, range(int(0.8 * args.deep), 10 * args.deep))
    shallow_rate, shallow_s = band_rate(placed_at, shallow)
    deep_rate, deep_s = band_rate(placed_at, deep)
    cpu = cpu1 - cpu0
    print(
        f"placements:                  {len(placed_at)} in {last - first:.1f} s = {len(placed_at) / (last - first):,.0f} /s"
    )
    print(f"  with ~{args.shallow} pending:        {shallow_rate:,.0f} /s over {shallow_s:.0f} s")
    print(
        f"  with ~{args.deep} pending:      {deep_rate:,.0f} /s over {deep_s:.0f} s ({deep_rate / shallow_rate - 1:+.0%})"
    )
    print(f"  the deep queue's burst:    placing again {caught_up - submitter.deep_at:.1f} s after it was all sent")
    print(
        f"scheduler CPU:               {cpu:.1f} s = {1000 * cpu / len(placed_at):.3f} ms per placement "
        f"({cpu / (last - first):.0%} of a core; ready but waiting for a core {wait1 - wait0:.1f} s)"
    )
    cycles = metric(scraped, "conductor_scheduler_decide_seconds_count")
    decide_s = metric(scraped, "conductor_scheduler_decide_seconds_sum")
    print(
        f"  deciding:                  {decide_s:.1f} s in {cycles:.0f} cycles ({1000 * decide_s / cycles:.2f} ms each)"
    )
    print(f"  fencing rejections:        {metric(scraped, 'conductor_scheduler_fencing_rejections_total'):.0f}")
    print(
        f"scheduler RSS:               start {rss0:.0f} MB, peak {peak:.0f} MB, end {rss1:.0f} MB, "
        f"{rss_settled:.0f} MB once it had folded every job's end and idled ({settled_s:.0f} s later)"
    )
    if snapshots is not None:
        snapshots.report()
    print(
        f"nats-server CPU:             {nats_cpu1 - nats_cpu0:.1f} s; this harness (nodes, executor, submits) {own_cpu1 - own_cpu0:.1f} s"
    )
    print(
        f"log:                         {total} events, {decisions} by the scheduler, of which {reasons} reason changes ({reasons / total:.1%} of the log)"
    )


if __name__ == "__main__":
    asyncio.run(main())
