"""Every running job's memory from one pass over the process table.

Each job's tree was found with ``psutil.Process(pid).children(recursive=True)``, which reads every
process's ``stat`` of the machine to find one job's children: a round over n jobs read the table n
times. With 600 jobs running (1,800 processes) the executor spent 85% of a core on it while the jobs
slept, and with 200 jobs among 2,500 processes a round took 25 s instead of its 1 s. Now each
process's ``/proc/<pid>/stat`` is read once a round, for its parent and its resident pages: psutil's
``process_iter`` gives the same in two files a process and its own objects, at 4-6 times the CPU
(bench/memory_sampling.py).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Collection, Iterator

_PAGE = os.sysconf("SC_PAGE_SIZE")
_MIB = 1024 * 1024
# Fields of /proc/<pid>/stat after the command's closing parenthesis (proc(5) numbers them from 1,
# the state being 3): the parent (4) and the resident set in pages (24).
_PPID, _RSS = 4 - 3, 24 - 3


def process_table(proc: str = "/proc") -> Iterator[tuple[int, int, int]]:
    """(pid, parent pid, resident bytes) of every process that could be read. One that ends while
    it is read is left out, as it would be a moment later."""
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        # The command is in parentheses and may hold anything, spaces and parentheses included.
        fields = data[data.rfind(b")") + 2 :].split()
        try:
            yield int(name), int(fields[_PPID]), int(fields[_RSS]) * _PAGE
        except (IndexError, ValueError):
            continue


def trees_memory_mb(roots: Collection[int]) -> dict[int, float]:
    """The resident memory, in MiB, of each root's descendants (not the root itself: a job's
    supervisor), what Slurm's jobacct_gather samples. A root that is gone, or has no children, is 0."""
    children: dict[int, list[int]] = defaultdict(list)
    rss: dict[int, int] = {}
    for pid, ppid, resident in process_table():
        children[ppid].append(pid)
        rss[pid] = resident
    return {root: sum(rss[pid] for pid in _descendants(root, children)) / _MIB for root in roots}


def _descendants(root: int, children: dict[int, list[int]]) -> Iterator[int]:
    seen: set[int] = {root}
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        if pid in seen:  # a pid reused while the table was read could make a loop
            continue
        seen.add(pid)
        yield pid
        stack.extend(children.get(pid, ()))
