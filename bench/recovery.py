"""Recovery benchmark (not a test): how soon a starting scheduler places a job again, replaying the
whole log against starting from a snapshot.

    python bench/recovery.py [--jobs 50000]

It fills a fresh stream with ``--jobs`` finished jobs (submitted, placed, started, completed: four
events each) published straight to the stream, then starts a scheduler in-process three times: with
no snapshot (replays everything), once more to store a snapshot, and from that snapshot; each time it
submits one job and times start -> that job's placement.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus, connect
from conductor_platform.localservers import start_nats
from conductor_scheduler import snapshot
from conductor_scheduler.service import Scheduler, run
from conductor_scheduler.settings import SchedulerSettings


def _job() -> ev.JobSubmitted:
    return ev.JobSubmitted(
        name="r", account="bench", partition="default", ntasks_per_node=1, cpus_per_task=1, cpus=1, memory_mb=1,
        time_limit_s=60, working_directory="/tmp", standard_output="", standard_error=None, script="true",
    )  # fmt: skip


async def fill(bus: Bus, jobs: int) -> int:
    """Publish without awaiting each ack (one connection keeps the order, so job ids are known)."""
    await bus.publish(ev.NodeRegistered(node="n", cpus=64, memory_mb=1 << 20))
    seq = 1
    for _ in range(jobs):
        job = seq + 1
        for event, by_scheduler in (
            (_job(), False),
            (ev.JobPlaced(job_id=job, node="n", cores=(0,), memory_mb=1), True),
            (ev.JobStarted(job_id=job, node="n", pid=1), False),
            (ev.JobCompleted(job_id=job, node="n"), False),
        ):
            await bus.nc.publish(subjects.subject_for(event, by_scheduler=by_scheduler), ev.encode(event))
        seq += 4
        if seq % 4000 < 4:
            await bus.nc.flush()
    await bus.nc.flush()
    stored = 0
    while stored < seq:  # the server stores what it received shortly after the flush
        await asyncio.sleep(0.1)
        stored = (await bus.js.stream_info(bus.stream)).state.last_seq
    return seq


async def time_to_place(bus: Bus, settings: SchedulerSettings) -> tuple[float, Scheduler]:
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(run(settings, stop))
    probe = await bus.publish(_job())
    while True:
        placed = await bus.js.get_last_msg(bus.stream, subjects.placements_for("n"))
        if ev.decode(placed.data or b"").job_id == probe:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.2)
    stop.set()
    scheduler = await task
    assert scheduler is not None
    await bus.publish(ev.JobCompleted(job_id=probe, node="n"))
    return elapsed, scheduler


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conductor-recovery-") as tmp:
        server = start_nats(Path(tmp) / "nats")
        try:
            bus = await connect(server.url, name="bench")
            t0 = time.perf_counter()
            events = await fill(bus, args.jobs)
            print(
                f"SCNS-Conductor recovery benchmark: {events} events in the log ({time.perf_counter() - t0:.1f} s to publish)"
            )
            # Nobody heartbeats here: no node may be declared lost while a scheduler replays.
            never = SchedulerSettings(
                nats_url=server.url, snapshot_every_events=10**12, use_lease=False, node_lost_after_s=1e9
            )
            full, replayed = await time_to_place(bus, never)
            print(f"replay from zero:    placing again after {full:6.2f} s ({replayed.folded} events folded)")
            keep = SchedulerSettings(
                nats_url=server.url,
                snapshot_every_events=1,
                snapshot_min_interval_s=0,
                use_lease=False,
                node_lost_after_s=1e9,
            )
            _, saver = await time_to_place(bus, keep)
            stored = await (await bus.js.object_store(snapshot.BUCKET)).get(snapshot.NAME)
            print(f"snapshot:            {len(stored.data or b'') / 1024:8.0f} KiB at seq {saver.snapshot_seq}")
            quick, restored = await time_to_place(bus, never)
            print(f"from the snapshot:   placing again after {quick:6.2f} s ({restored.folded} events folded)")
            await bus.close()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
