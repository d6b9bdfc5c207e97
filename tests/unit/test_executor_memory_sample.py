"""Jobs' memory from one pass over the process table, on real process trees."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from conductor_executor.memory_sample import trees_memory_mb

HOG = f'{sys.executable} -c "b = bytearray(64 * 1024 * 1024); import time; time.sleep(60)"'


@pytest.fixture
def trees() -> Iterator[tuple[int, int]]:
    """Two trees like jobs under their supervisors: one whose grandchild holds 64 MiB, one of sleeps."""
    hog = subprocess.Popen(["bash", "-c", f"bash -c '{HOG}' & sleep 60 & wait"])
    idle = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60 & wait"])
    try:
        deadline = time.monotonic() + 20
        while _children_mb(hog.pid) < 64 or len(psutil.Process(idle.pid).children()) < 2:
            assert time.monotonic() < deadline, "the trees did not come up"
            time.sleep(0.05)
        yield hog.pid, idle.pid
    finally:
        for root in (hog, idle):
            for child in psutil.Process(root.pid).children(recursive=True):
                child.kill()
            root.kill()
            root.wait()


def _children_mb(pid: int) -> float:
    """What the executor summed before: each tree looked up on its own."""
    total = 0
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total / (1024 * 1024)


def test_each_tree_counts_its_descendants_and_not_its_root(trees: tuple[int, int]) -> None:
    hog, idle = trees
    sampled = trees_memory_mb([hog, idle])
    assert sampled[hog] >= 64, "the grandchild's memory counts"
    assert sampled[idle] < 32, "one tree's memory is not another's"
    # The same figures as each tree looked up on its own (within what a running process changes).
    for root in (hog, idle):
        assert abs(sampled[root] - _children_mb(root)) < 4


def test_a_tree_that_is_gone_or_childless_weighs_nothing() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    alone = subprocess.Popen(["sleep", "30"])
    try:
        assert trees_memory_mb([gone.pid, alone.pid]) == {gone.pid: 0.0, alone.pid: 0.0}
    finally:
        alone.kill()
        alone.wait()
