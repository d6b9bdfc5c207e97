"""The projector's reads of the log, handed to the republisher (``republish.py``) of the same process:
while the two are level the log is read once for both, where it was delivered to the process twice.

A read says which stored events it holds: every one past ``after`` up to its last. That is its
reader's own belief, the one the projector's position rests on (``bus.LogReader``: one consumer, in
stream order, none left out). The republisher, which has published everything up to its position,
takes only from a read with ``after <= position < last``, so it can neither skip nor repeat an event.
Anywhere else (behind the oldest read kept, far ahead of the projector, or the projector no longer
reading: PostgreSQL away) it reads the log on its own, as it did before this.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nats.aio.msg import Msg

from conductor_projector.operations import Item

# A few of the projector's batches: the republisher takes each as it is read, so one or two would do;
# more than this behind, it reads on its own. The newest read is always kept, whatever its size.
MAX_READS = 8
MAX_BYTES = 64 * 1024 * 1024


class Where(enum.Enum):
    """Where a position stands against the reads kept, when none of them holds what follows it."""

    LEVEL = "level"  # at the newest read's end: what follows has not been read yet
    AHEAD = "ahead"  # past the newest read's end (the projector is catching up)
    BEHIND = "behind"  # before the oldest read kept
    NOTHING = "nothing"  # no read kept (the projector has not read since it started reading again)


@dataclass(frozen=True)
class Read:
    after: int
    seqs: Sequence[int]
    msgs: Sequence[Msg]
    items: Sequence[Item]
    size: int

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else self.after


@dataclass(frozen=True)
class Taken:
    """What follows a position, in log order: (log sequence, message, its decoded event)."""

    events: list[tuple[int, Msg, Item]]

    @property
    def last(self) -> int:
        return self.events[-1][0]


class SharedReads:
    def __init__(
        self, max_reads: int = MAX_READS, max_bytes: int = MAX_BYTES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._reads: deque[Read] = deque()
        self._bytes = 0
        self._max_reads, self._max_bytes, self._clock = max_reads, max_bytes, clock
        # The furthest the projector's reads ever got, and when they last went past it (or, idle, found
        # nothing past it): reads offered again from behind (a batch that keeps failing to apply,
        # PostgreSQL read-only) are no sign that the projector will read what follows.
        self._frontier = -1
        self._progressed_at: float | None = None
        self._changed = asyncio.Event()

    def offer(self, after: int, msgs: Sequence[Msg], events: Sequence[tuple[int, Item]]) -> None:
        """A read of the projector: ``events`` decoded from ``msgs`` (same order), every stored event
        past ``after`` up to the last of them. An empty read says the projector is reading and found
        nothing past ``after``."""
        last = events[-1][0] if events else after
        if last > self._frontier or (not events and after == self._frontier):
            self._frontier = last
            self._progressed_at = self._clock()
        self._changed.set()
        if not self._reads or after != self._reads[-1].last:  # the projector started reading again
            self._reads.clear()
            self._bytes = 0
        elif not events:
            return
        size = sum(len(m.data) for m in msgs)
        self._reads.append(Read(after, [seq for seq, _ in events], msgs, [item for _, item in events], size))
        self._bytes += size
        while len(self._reads) > 1 and (len(self._reads) > self._max_reads or self._bytes > self._max_bytes):
            self._bytes -= self._reads.popleft().size

    def take(self, position: int) -> Taken | Where:
        """What the reads kept hold past ``position`` (everything up to it published), or where it stands."""
        if not self._reads:
            return Where.NOTHING
        if position < self._reads[0].after:
            return Where.BEHIND
        newest = self._reads[-1].last
        if position == newest:
            return Where.LEVEL
        if position > newest:
            return Where.AHEAD
        for read in self._reads:
            if read.after <= position < read.last:
                i = bisect_right(read.seqs, position)
                return Taken([(read.seqs[k], read.msgs[k], read.items[k]) for k in range(i, len(read.seqs))])
        raise AssertionError("reads kept are contiguous")  # each follows the last (offer), so unreachable

    @property
    def newest(self) -> int | None:
        return self._reads[-1].last if self._reads else None

    def progressing(self, within_s: float) -> bool:
        """Whether the projector's reads went further than ever before within the last ``within_s``
        (or found nothing further: idle at the log's end)."""
        return self._progressed_at is not None and self._clock() - self._progressed_at <= within_s

    async def wait(self, timeout_s: float) -> None:
        """Until the next offer, or ``timeout_s``; an offer made since the last wait ends it at once."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        self._changed.clear()
