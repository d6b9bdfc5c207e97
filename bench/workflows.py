"""Workflow benchmark (not a test): what edges cost, and how fast a finished parent releases its child.

    python bench/workflows.py [--jobs 999] [--pairs 40] [--node-cpus 32]

1. A workflow of ``--jobs`` trivial jobs shaped fan-out then fan-in (one source, the rest in
   parallel, one sink waiting for all of them) against the same jobs as a workflow without edges:
   time from the submit to the last job's end.
2. On an idle system, ``--pairs`` two-job workflows (parent, then child): the release latency,
   parent's end -> child's start, against plain submit -> start of single jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import httpx
from harness import BenchSystem, conductor_up, follow, percentile


def _job(name: str, work: str, parents: list[int]) -> dict[str, Any]:
    return {"name": name, "script": "true", "current_working_directory": work, "parent_indices": parents}


async def _workflow(client: httpx.AsyncClient, user: str, jobs: list[dict[str, Any]]) -> list[int]:
    answer = await client.post("/workflows/", json={"user_id": user, "jobs": jobs})
    answer.raise_for_status()
    return [int(j) for j in answer.json()["job_ids"]]


async def _span(system: BenchSystem, client: httpx.AsyncClient, user: str, jobs: list[dict[str, Any]]) -> float:
    start = time.time()
    ids = await _workflow(client, user, jobs)
    times = await follow(system.nats.url, set(ids), deadline_s=600)
    if len(times.ended) < len(ids):
        return float("nan")
    if failed := times.not_completed():
        sys.exit(f"workflow jobs that did not complete: {failed}: the figures would not measure completions")
    return max(times.ended.values()) - start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=999)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--node-cpus", type=int, default=32)
    args = parser.parse_args()
    async with conductor_up(args.node_cpus) as system, httpx.AsyncClient(base_url=system.url, timeout=60) as client:
        user = (await client.post("/users/", json={"username": "bench"})).json()["id"]
        work = str(system.work)
        print(
            f"SCNS-Conductor workflow benchmark: {args.jobs}-job workflows, {args.pairs} pairs, one node offering "
            f"{args.node_cpus} CPUs, {os.cpu_count()} CPUs on this machine"
        )
        middle = range(1, args.jobs - 1)
        shaped = [_job("source", work, [])] + [_job(f"m{i}", work, [0]) for i in middle]
        shaped.append(_job("sink", work, list(middle)))
        flat = [_job(f"j{i}", work, []) for i in range(args.jobs)]
        flat_s = await _span(system, client, user, flat)
        shaped_s = await _span(system, client, user, shaped)
        print(f"{args.jobs} jobs without edges:          {flat_s:6.2f} s   ({args.jobs / flat_s:6.0f} jobs/s)")
        print(f"{args.jobs} jobs fan-out then fan-in:    {shaped_s:6.2f} s   ({args.jobs / shaped_s:6.0f} jobs/s)")

        release: list[float] = []
        plain: list[float] = []
        for i in range(args.pairs):
            parent, child = await _workflow(client, user, [_job(f"p{i}", work, []), _job(f"c{i}", work, [0])])
            pair = await follow(system.nats.url, {parent, child}, deadline_s=60)
            if child in pair.started and parent in pair.ended:
                release.append(pair.started[child] - pair.ended[parent])
            spec = {"name": f"s{i}", "account": "bench", "current_working_directory": work}
            single = int((await client.post("/jobs/submit", json={"job": spec, "script": "true"})).json()["job_id"])
            one = await follow(system.nats.url, {single}, deadline_s=60)
            if single in one.started:
                plain.append(one.started[single] - one.submitted[single])
        for label, values in (("dependency release (parent end -> child start)", release), ("submit -> start", plain)):
            print(
                f"{label:48s} p50 {percentile(values, 0.5) * 1000:7.1f} ms   p99 {percentile(values, 0.99) * 1000:7.1f} ms"
            )
        ratio = percentile(release, 0.5) / percentile(plain, 0.5)
        print(f"release p50 / submit->start p50: {ratio:.2f} (target: within 2x)")


if __name__ == "__main__":
    asyncio.run(main())
