"""What one round of the executor's memory sampling costs with many jobs running (not a test).

    python bench/memory_sampling.py [--jobs 100 300 600] [--rounds 3]

Starts ``--jobs`` process trees shaped like running jobs (a root standing for the supervisor, a bash,
a sleep) and times one sampling round over all of them: each tree looked up on its own
(``psutil.Process(root).children(recursive=True)``, how the executor sampled until 2026-12-02, which
reads the whole process table once per job) against one pass over the table for every job
(``memory_sample.trees_memory_mb``). A round runs every ``CONDUCTOR_MEMORY_POLL_S`` (1 s): the
milliseconds per round are the share of a core the executor spends on it, in tenths of a percent.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator

import psutil

from conductor_executor.memory_sample import trees_memory_mb


def per_tree(roots: list[int]) -> dict[int, float]:
    sampled = {}
    for root in roots:
        total = 0
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(root).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
        sampled[root] = total / (1024 * 1024)
    return sampled


@contextlib.contextmanager
def trees(count: int) -> Iterator[list[int]]:
    procs = [
        subprocess.Popen(["bash", "-c", "bash -c 'sleep 600; true' & wait"], stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        deadline = time.monotonic() + 60
        while sum(len(psutil.Process(p.pid).children(recursive=True)) for p in procs) < 2 * count:
            if time.monotonic() > deadline:
                raise RuntimeError("the trees did not come up")
            time.sleep(0.1)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(p.pid).children(recursive=True):
                    child.kill()
            p.kill()
            p.wait()


def best_ms(sample: Callable[[list[int]], dict[int, float]], roots: list[int], rounds: int) -> tuple[float, float]:
    """(wall ms, CPU ms) of the best of ``rounds`` rounds."""
    best = (float("inf"), float("inf"))
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        sample(roots)
        best = min(best, ((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 300, 600])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'jobs':>5} {'processes':>9} {'per tree: ms/round (CPU)':>26} {'one pass: ms/round (CPU)':>26}")
    for count in args.jobs:
        with trees(count) as roots:
            processes = len(psutil.pids())
            old_wall, old_cpu = best_ms(per_tree, roots, args.rounds)
            new_wall, new_cpu = best_ms(trees_memory_mb, roots, args.rounds)
            print(
                f"{count:>5} {processes:>9} {old_wall:>15.1f} ({old_cpu:>7.1f}) {new_wall:>15.1f} ({new_cpu:>7.1f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
