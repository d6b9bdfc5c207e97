"""Throughput benchmark (not a test): submits N trivial jobs over HTTP and prints what it measured.

    python bench/throughput.py [--jobs 2000] [--concurrency 64] [--node-cpus 32] [--submit-only]
                               [--client raw|aiohttp]

It starts its own nats-server and PostgreSQL (the embedded default) and ``conductor up`` on them,
submits ``true`` jobs with concurrency, waits for their outcomes, reads the log to time each job, and
measures, in the same run, the raw ceilings of this machine: JetStream publish-with-ack one at a time
and ``bash -c true`` spawns. The node offers ``--node-cpus`` cores (more than the machine has) so
the pipeline, not the core count, is what gets measured.

``--submit-only`` measures intake with the rest of the pipeline idle-ish: the jobs go to a partition
no node serves, so nothing runs (the scheduler folds them and holds them PENDING, the projector
writes their rows). It separates the gateway's own ceiling from the machine's. ``make bench`` runs
both: intake alone, as on a deployment whose gateways do not share their cores with jobs, then the
whole pipeline with its jobs on the same two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import aiohttp
import asyncpg
import nats
import psutil
from harness import conductor_up, disk_note, follow, percentile
from http_load import LoadResult, submit_load

from conductor_platform.localservers import LocalServer


async def raw_publish_rate(url: str, seconds: float = 2.0) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="BENCHRAW", subjects=["benchraw.>"])
    payload = b"x" * 200
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        await js.publish("benchraw.x", payload)
        count += 1
    rate = count / (time.perf_counter() - start)
    await js.delete_stream("BENCHRAW")
    await nc.close()
    return rate


async def raw_spawn_rate(seconds: float = 2.0) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        proc = await asyncio.create_subprocess_exec("/bin/bash", "-c", "true")
        await proc.wait()
        count += 1
    return count / (time.perf_counter() - start)


async def read_model_done(database_url: str, jobs: int, every_s: float = 0.05) -> float:
    """When the read models (what ``GET /jobs`` answers from) first showed ``jobs`` jobs COMPLETED:
    wall clock, to within ``every_s``. The system is the benchmark's own: every job in it is one of
    the run's."""
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            if await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'COMPLETED'") >= jobs:
                return time.time()
            await asyncio.sleep(every_s)
    finally:
        await conn.close()


def submit_body(workdir: str, partition: str) -> dict[str, object]:
    return {
        "job": {
            "name": "bench",
            "account": "bench",
            "partition": partition,
            "memory_per_node": "10M",
            "time_limit": "5",
            "current_working_directory": workdir,
            "standard_output": "/dev/null",
        },
        "script": "true",
    }


async def submit_aiohttp(url: str, body: dict[str, object], jobs: int, concurrency: int) -> LoadResult:
    """The former load generator, kept for A/B: it costs about three times the gateway's CPU."""
    remaining = iter(range(jobs))
    result = LoadResult(0.0)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def worker() -> None:
            for _ in remaining:
                sent = time.perf_counter()
                async with session.post("/jobs/submit", json=body) as answer:
                    answer.raise_for_status()
                    job_id = int((await answer.json())["job_id"])
                result.latencies.append(time.perf_counter() - sent)
                result.job_ids.append(job_id)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.rate = jobs / (time.perf_counter() - start)
    return result


_SERVICES = {
    "conductor_gateway": "gateway",
    "conductor_scheduler": "scheduler",
    "conductor_executor": "executor",
    "conductor_projector": "projector",
}


def _service(proc: psutil.Process) -> str:
    return next((v for k, v in _SERVICES.items() if k in " ".join(proc.cmdline())), proc.name())


def _services(up_pid: int) -> list[psutil.Process]:
    """``conductor up``'s children and the bench's own extra executors (``--executors``)."""
    extra = [p for p in psutil.Process().children() if "conductor_executor" in " ".join(p.cmdline())]
    return [*psutil.Process(up_pid).children(), *extra]


def cpu_by_process(up_pid: int, *servers: LocalServer) -> dict[str, float]:
    """Where the machine's CPU went: the figure to look at before optimising."""
    spent: dict[str, float] = {}
    for proc in _services(up_pid):
        name = _service(proc)
        times = proc.cpu_times()
        spent[name] = spent.get(name, 0.0) + times.user + times.system  # --gateways: their sum
    for server in servers:
        procs = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
        spent[server.name] = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    spent["bench client"] = sum(psutil.Process().cpu_times()[:2])
    return spent


def rss_by_process(up_pid: int, *servers: LocalServer) -> dict[str, float]:
    """Resident memory (MB) of each service, summed over its processes (``--gateways``)."""
    rss: dict[str, float] = {}
    for proc in _services(up_pid):
        name = _service(proc)
        rss[name] = rss.get(name, 0.0) + proc.memory_info().rss / 2**20
    for server in servers:
        rss[server.name] = psutil.Process(server.process.pid).memory_info().rss / 2**20
    return rss


def rss_moved(before: dict[str, float], after: dict[str, float]) -> str:
    return ", ".join(f"{k} {before.get(k, 0.0):.0f} -> {v:.0f}" for k, v in sorted(after.items()))


def machine_busy() -> tuple[float, float]:
    """CPU seconds the whole machine spent busy, and available, so far (``/proc/stat``): what the
    processes above leave out (the jobs' own processes, the kernel's work outside them) shows here."""
    times = psutil.cpu_times()
    # Linux: guest time is counted in user already; steal is the hypervisor's, not this machine's work.
    busy = times.user + times.nice + times.system + times.irq + times.softirq
    return busy, busy + times.idle + times.iowait + times.steal


def machine_spent(before: tuple[float, float], after: tuple[float, float], jobs: int) -> str:
    busy, available = after[0] - before[0], after[1] - before[1]
    share = busy / available if available else 0.0
    return (
        f"machine CPU busy:        {busy:8.1f} s of {available:.1f} s ({share:.0%}), {busy * 1000 / jobs:.1f} ms per job"
        "   (everything on the machine: meaningful when nothing else runs)"
    )


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> str:
    """CPU seconds of the run alone: start-up (imports, migrations) and the ceilings measured
    before it are not counted."""
    spent = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return ", ".join(f"{k} {v:.1f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1]))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--node-cpus", type=int, default=32)
    parser.add_argument("--gateways", type=int, default=1, help="gateway processes (conductor up --gateways)")
    parser.add_argument(
        "--executors",
        type=int,
        default=1,
        help="nodes, each with an executor process on this machine offering --node-cpus",
    )
    parser.add_argument(
        "--submit-only", action="store_true", help="submit to a partition no node serves: intake alone, nothing runs"
    )
    parser.add_argument(
        "--client", choices=("raw", "aiohttp"), default="raw", help="load generator (aiohttp: the former one)"
    )
    args = parser.parse_args()

    # conductor up reads it (--gateways); through the environment, as the harness passes it on.
    os.environ["CONDUCTOR_GATEWAYS"] = str(args.gateways)
    async with conductor_up(args.node_cpus, extra_executors=args.executors - 1) as system:
        nats_server, postgres, up, url, tmp = system.nats, system.postgres, system.up, system.url, str(system.work)
        print(
            f"SCNS-Conductor benchmark: {args.jobs} jobs 'true', concurrency {args.concurrency}, "
            f"{args.executors} node(s) offering {args.node_cpus} CPUs each, {os.cpu_count()} CPUs on this machine, "
            f"{args.gateways} gateway process(es), {args.client} client{', submit only' if args.submit_only else ''}"
        )
        if note := disk_note(system.work):
            print(f"disk: {note}")
        publish_ceiling = await raw_publish_rate(nats_server.url)
        spawn_ceiling = 0.0 if args.submit_only else await raw_spawn_rate()
        body = submit_body(tmp, "bench-idle" if args.submit_only else "default")
        cpu_before = cpu_by_process(up.pid, nats_server, postgres)
        rss_before = rss_by_process(up.pid, nats_server, postgres)
        machine_before = machine_busy()
        t0 = time.perf_counter()
        submit = submit_load if args.client == "raw" else submit_aiohttp
        load = await submit(url, body, args.jobs, args.concurrency)
        submit_rate, ids = load.rate, load.job_ids
        cpu_submitted = cpu_by_process(up.pid, nats_server, postgres)
        # Per process while the submits went on (the pipeline works meanwhile): what bounds intake.
        submit_cpu = "CPU seconds during the submits: " + cpu_spent(cpu_before, cpu_submitted)
        # The gateway's own ceiling, whatever else the machine is doing: submits per second it could
        # answer on one core at its measured CPU cost (summed over its processes with --gateways).
        gateway_cpu_ms = (cpu_submitted["gateway"] - cpu_before["gateway"]) * 1000 / len(ids)
        gateway_cost = f"gateway CPU per submit:  {gateway_cpu_ms:8.3f} ms   ({1000 / gateway_cpu_ms:.0f} /s per core)"
        submit_latency = (
            f"submit latency:          p50 {percentile(load.latencies, 0.5) * 1000:7.1f} ms   "
            f"p99 {percentile(load.latencies, 0.99) * 1000:7.1f} ms"
        )
        if args.submit_only:
            print(
                f"submits accepted:        {submit_rate:8.0f} /s   ({submit_rate / publish_ceiling:.0%} of raw publish)"
            )
            print(submit_latency)
            print("CPU seconds spent, by process: " + cpu_spent(cpu_before, cpu_submitted))
            print(machine_spent(machine_before, machine_busy(), len(ids)))
            print(gateway_cost)
            print(f"raw JetStream publish+ack, one at a time: {publish_ceiling:8.0f} /s")
            return
        # Watched while the jobs run: the completion is COMPLETED in the read model.
        in_read_model = asyncio.create_task(read_model_done(postgres.url, len(ids)))
        times = await follow(nats_server.url, set(ids), deadline_s=600, outcomes=len(ids))
        submitted, placed, started, ended = times.submitted, times.placed, times.started, times.ended
        if failed := times.not_completed():
            sys.exit(f"jobs that did not complete: {failed}: the figures would not measure completions")
        wall = time.perf_counter() - t0
        first_submit = min(submitted.values())
        completed_rate = len(ended) / (max(ended.values()) - first_submit) if ended else 0.0
        latency = [started[j] - submitted[j] for j in started if j in submitted]
        to_start = [started[j] - placed[j] for j in started if j in placed]
        print(f"submits accepted:        {submit_rate:8.0f} /s   ({submit_rate / publish_ceiling:.0%} of raw publish)")
        print(
            f"jobs completed:          {completed_rate:8.0f} /s   ({completed_rate / spawn_ceiling:.0%} of raw spawn)"
            f"   {len(ended)}/{len(ids)} ended in {wall:.1f}s"
        )
        try:
            read_model_at = await asyncio.wait_for(in_read_model, 60)
        except TimeoutError:
            sys.exit("the read models did not show every job COMPLETED within 60 s of their outcomes")
        print(
            f"  COMPLETED in the read model: {len(ids) / (read_model_at - first_submit):8.0f} /s   "
            f"(every job {(read_model_at - max(ended.values())) * 1000:.0f} ms after the last outcome)"
        )
        print(submit_latency)
        print(
            f"submit->start latency:   p50 {percentile(latency, 0.5) * 1000:7.1f} ms   "
            f"p99 {percentile(latency, 0.99) * 1000:7.1f} ms"
        )
        print(
            f"  of which placed->start: p50 {percentile(to_start, 0.5) * 1000:7.1f} ms   p99 {percentile(to_start, 0.99) * 1000:7.1f} ms"
        )
        print("CPU seconds spent, by process: " + cpu_spent(cpu_before, cpu_by_process(up.pid, nats_server, postgres)))
        print(machine_spent(machine_before, machine_busy(), len(ids)))
        print("RSS MB before -> after the run: " + rss_moved(rss_before, rss_by_process(up.pid, nats_server, postgres)))
        print(submit_cpu)
        print(gateway_cost)
        print(f"raw JetStream publish+ack, one at a time: {publish_ceiling:8.0f} /s")
        print(f"raw 'bash -c true' spawn, one at a time:  {spawn_ceiling:8.0f} /s")


if __name__ == "__main__":
    asyncio.run(main())
