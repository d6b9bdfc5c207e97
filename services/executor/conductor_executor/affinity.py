"""The calling thread moved to a job's CPUs without holding the GIL while the kernel moves it.

``os.sched_setaffinity`` keeps the GIL through the system call. When the thread runs on a CPU the new
mask leaves out, the call returns only once the thread runs on one of the others, and on a busy node
that waits for the task running there to give way: milliseconds in which no other thread of the
executor, its event loop included, runs a line. A ctypes call releases the GIL for its duration.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable

_WORD_BITS = ctypes.sizeof(ctypes.c_ulong) * 8


def _libc_setaffinity() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sched_setaffinity
    except (OSError, AttributeError):  # not glibc or musl: os.sched_setaffinity, with the GIL held
        return None
    # Declared: a size passed as a C int would leave the upper half of its register undefined (ARM64).
    function.argtypes = (ctypes.c_int, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ulong))
    function.restype = ctypes.c_int
    setaffinity: Callable[..., int] = function
    return setaffinity


_SETAFFINITY = _libc_setaffinity()


def move_thread(cpus: Iterable[int]) -> None:
    """Run the calling thread (and what it starts from now on) on ``cpus`` only. Raises OSError as
    ``os.sched_setaffinity`` does (EINVAL: none of them is a CPU of this machine)."""
    cpus = set(cpus)
    if _SETAFFINITY is None or not cpus or min(cpus) < 0:
        os.sched_setaffinity(0, cpus)
        return
    mask = (ctypes.c_ulong * (max(cpus) // _WORD_BITS + 1))()
    for cpu in cpus:
        mask[cpu // _WORD_BITS] |= 1 << (cpu % _WORD_BITS)
    if _SETAFFINITY(0, ctypes.sizeof(mask), mask) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
