"""What a trivial job costs the executor, without the rest of the system (not a test):

    python bench/executor_cost.py [--jobs 2000] [--executors 1] [--cpus 32]

Starts its own nats-server and ``--executors`` executor processes (nodes ``cost0``, ``cost1``...,
``--cpus`` cores each), publishes ``--jobs`` JobSubmitted (``true``, output to /dev/null) straight to
the stream and then places them itself, like the scheduler would, on free cores as earlier jobs end.
No gateway, scheduler or projector shares the machine, so what it prints is the executor's own
ceiling: jobs/s from the first placement to the last outcome, and CPU milliseconds per job of the
executors (their event loops and threads; the jobs and their supervisors are not counted) and of
nats-server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from conductor_contracts import events as ev
from conductor_platform.bus import Bus, connect
from conductor_platform.localservers import start_nats


def _job(workdir: str) -> ev.JobSubmitted:
    return ev.JobSubmitted(
        name="cost",
        account="bench",
        partition="default",
        ntasks_per_node=1,
        cpus_per_task=1,
        cpus=1,
        memory_mb=10,
        time_limit_s=60,
        working_directory=workdir,
        standard_output="/dev/null",
        standard_error=None,
        script="true",
    )


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _times(pid: int) -> tuple[float, float]:
    """Kernel CPU of the process, and CPU of its reaped children (the supervisors and their jobs)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.system), float(times.children_user + times.children_system)


async def _place_all(bus: Bus, ids: list[int], nodes: list[str], cpus: int) -> tuple[float, int]:
    """Place every job on a free core, as its predecessor on that core ends; (seconds, failures)."""
    free: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    for core in range(cpus):
        for node in nodes:
            free.put_nowait((node, core))
    held: dict[int, tuple[str, int]] = {}
    left = set(ids)
    failed = 0
    all_ended = asyncio.Event()

    async def on_event(msg: object) -> None:
        nonlocal failed
        event = ev.decode(msg.data)  # type: ignore[attr-defined]
        if isinstance(event, ev.TERMINAL_JOB_EVENTS) and event.job_id in held:
            job_id = event.job_id
            failed += not isinstance(event, ev.JobCompleted)
            free.put_nowait(held.pop(job_id))
            left.discard(job_id)
            if not left:
                all_ended.set()

    sub = await bus.nc.subscribe("conductor.exec.>", cb=on_event)
    start = time.perf_counter()
    for job_id in ids:
        node, core = await free.get()
        held[job_id] = (node, core)
        await bus.publish(ev.JobPlaced(job_id=job_id, node=node, cores=(core,), memory_mb=10), by_scheduler=True)
    await all_ended.wait()
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    return elapsed, failed


async def _registered(bus: Bus, nodes: list[str], timeout_s: float = 60) -> None:
    seen: set[str] = set()
    done = asyncio.Event()

    async def on_event(msg: object) -> None:
        event = ev.decode(msg.data)  # type: ignore[attr-defined]
        if isinstance(event, ev.NodeRegistered):
            seen.add(event.node)
            if seen >= set(nodes):
                done.set()

    sub = await bus.nc.subscribe("conductor.exec.*.node.registered", cb=on_event)
    try:
        await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        await sub.unsubscribe()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--executors", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=32, help="cores each node offers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conductor-executor-cost-") as tmp:
        work = Path(tmp)
        nats_server = start_nats(work / "nats")
        executors: list[subprocess.Popen[bytes]] = []
        try:
            bus = await connect(nats_server.url, name="executor-cost")
            ids = [await bus.publish(_job(tmp)) for _ in range(args.jobs)]
            nodes = [f"cost{i}" for i in range(args.executors)]
            env = os.environ | {
                "NATS_URL": nats_server.url,
                "CONDUCTOR_STATE_DIR": str(work / "executor"),
                "CONDUCTOR_LOG_LEVEL": "WARNING",
            }
            registered = asyncio.create_task(_registered(bus, nodes))
            await asyncio.sleep(0.1)  # subscribed before any executor can register
            for node in nodes:
                argv = [sys.executable, "-m", "conductor_executor", "--node", node, "--cpus", str(args.cpus)]
                executors.append(subprocess.Popen([*argv, "--memory", "64G"], env=env, stderr=subprocess.DEVNULL))
            await registered
            await asyncio.sleep(1.0)  # their consumers exist before the first placement
            cpu0 = [_cpu_s(p.pid) for p in executors]
            times0 = [_times(p.pid) for p in executors]
            nats0 = _cpu_s(nats_server.process.pid)
            elapsed, failed = await _place_all(bus, ids, nodes, args.cpus)
            cpu = sum(_cpu_s(p.pid) for p in executors) - sum(cpu0)
            times = [_times(p.pid) for p in executors]
            kernel = sum(t[0] for t in times) - sum(t[0] for t in times0)
            children = sum(t[1] for t in times) - sum(t[1] for t in times0)
            nats_cpu = _cpu_s(nats_server.process.pid) - nats0
            await bus.close()
        finally:
            for proc in executors:
                proc.terminate()
            for proc in executors:
                proc.wait(30)
            nats_server.stop()
    print(
        f"executor cost: {args.jobs} jobs 'true' on {args.executors} executor(s) of {args.cpus} cores, "
        f"{os.cpu_count()} CPUs on this machine"
    )
    print(f"jobs completed:        {args.jobs / elapsed:8.0f} /s   ({failed} not COMPLETED)")
    print(f"executor CPU per job:  {cpu / args.jobs * 1000:8.2f} ms   (all executors, {cpu:.1f} s)")
    print(f"  of which in the kernel: {kernel / args.jobs * 1000:5.2f} ms")
    print(f"supervisors and jobs:  {children / args.jobs * 1000:8.2f} ms   (the executors' reaped children)")
    print(f"nats-server CPU per job: {nats_cpu / args.jobs * 1000:6.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
