"""The projector's SQL alone, as a live projector meets it (not a test): with and without the rows it
keeps between batches (``CONDUCTOR_KEPT_ROWS``), alternating in one process so the host's noise
falls on both alike.

    python bench/projector_sink.py [--jobs 20000] [--lag 150] [--batch 100] [--rounds 6]

It starts its own PostgreSQL and applies a log whose jobs live as they do live: each job is placed
``--lag`` submissions after its own, started ``--lag`` later, completed ``--lag`` after that, so a
batch of ``--batch`` events touches jobs that earlier batches wrote. The events are decoded already:
what is timed is ``sink.apply_batch`` (operations, reads, upserts, the position), CPU and wall
microseconds per event, for each round.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from projector import submission
from sqlalchemy.ext.asyncio import create_async_engine

from conductor_contracts import events as ev
from conductor_platform.localservers import start_postgres
from conductor_platform.settings import async_database_url
from conductor_projector import migrate, sink
from conductor_projector.row_cache import RowCache


def live_log(jobs: int, lag: int) -> list[tuple[int, sink.Item]]:
    log: list[ev.Event] = [ev.NodeRegistered(node="n1", cpus=65536, memory_mb=10**9, partitions=("default",))]
    job_ids: list[int] = []
    steps: tuple[tuple[int, Callable[[int], ev.Event]], ...] = (
        (lag, lambda job: ev.JobPlaced(job_id=job, node="n1", cores=(0,), memory_mb=100)),
        (2 * lag, lambda job: ev.JobStarted(job_id=job, node="n1", pid=100)),
        (3 * lag, lambda job: ev.JobCompleted(job_id=job, node="n1")),
    )
    for i in range(jobs + 3 * lag):
        if i < jobs:
            log.append(submission(i))
            job_ids.append(len(log))
        for behind, make in steps:
            if 0 <= i - behind < jobs:
                log.append(make(job_ids[i - behind]))
    return list(enumerate(log, start=1))


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--lag", type=int, default=150)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    log = live_log(args.jobs, args.lag)
    print(f"projector sink: {len(log)} events ({args.jobs} jobs, lag {args.lag}), batches of {args.batch}")
    with tempfile.TemporaryDirectory(prefix="conductor-sink-bench-") as tmp:
        postgres = start_postgres(Path(tmp) / "postgres")
        engine = create_async_engine(async_database_url(postgres.url), pool_size=2)
        try:
            await asyncio.to_thread(migrate.upgrade, postgres.url)
            figures: dict[int, list[tuple[float, float]]] = {0: [], 10_000: []}
            for n in range(args.rounds):
                for limit in (0, 10_000) if n % 2 == 0 else (10_000, 0):
                    await sink.reset(engine)
                    kept = RowCache(limit)
                    cpu0, wall0 = _cpu_s(), time.perf_counter()
                    for i in range(0, len(log), args.batch):
                        await sink.apply_batch(engine, "bench", log[i : i + args.batch], kept=kept)
                    per = 1e6 / len(log)
                    figures[limit].append(((_cpu_s() - cpu0) * per, (time.perf_counter() - wall0) * per))
            for limit, runs in figures.items():
                cpu = sorted(c for c, _ in runs)
                wall = sorted(w for _, w in runs)
                print(
                    f"kept rows {limit:>6}: CPU {statistics.median(cpu):6.1f} us/event (min {cpu[0]:.1f}), "
                    f"wall {statistics.median(wall):6.1f} us/event (min {wall[0]:.1f}), {len(runs)} rounds"
                )
        finally:
            await engine.dispose()
            postgres.stop()


if __name__ == "__main__":
    asyncio.run(main())
