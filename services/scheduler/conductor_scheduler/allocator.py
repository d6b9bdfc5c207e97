"""Memory the C allocator holds free, given back to the system when the scheduler is quiet.

glibc keeps what a burst freed (the messages and dict tables of a 100k-deep queue folded in) in its
heap, and returns only a free stretch at the very top of it on its own: after the queue drained, about
12 MB of the scheduler's RSS was such free memory (bench/scale.py, 200,000 jobs). ``malloc_trim``
returns every free page. It walks the heap (milliseconds), so it is called only when the log turns
quiet after some events, at most once every ``EVERY_S``; where the C library has none (musl), never.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable

EVERY_S = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


class GiveBack:
    def __init__(self, clock: Callable[[], float] = time.monotonic, every_s: float = EVERY_S) -> None:
        self.clock, self.every_s = clock, every_s
        self.trim = _malloc_trim()
        self.last = -every_s
        self.folded = False  # events folded since the last time

    def busy(self) -> None:
        self.folded = True

    def quiet(self) -> bool:
        """The log is quiet: give free memory back if events came since and it is time; whether it was done."""
        now = self.clock()
        if self.trim is None or not self.folded or now - self.last < self.every_s:
            return False
        self.last, self.folded = now, False
        self.trim(0)
        return True
