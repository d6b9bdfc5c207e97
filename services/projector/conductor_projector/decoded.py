"""Each event decoded once for the two readers of the log in a projector process.

The live projector reads the log twice, for the read models and for the public subjects (republish),
and decoding is most of what either spends on an event. Whichever reaches an event first decodes it
and leaves it here; the other takes it (and so removes it). The events are frozen models, shared as
they are. Only a few batches are kept: a reader far behind the other decodes for itself, as it
would without this. An entry is only taken for the same subject and bytes, so what a reader gets is
always ``operations.decode`` of what it read.
"""

from __future__ import annotations

from collections import OrderedDict

from conductor_projector.operations import Item, decode

# In a catch-up of 200,000 events (bench/projector.py) one reader led the other by up to 10,000
# events: 4096 kept only caught 2% of them, 16384 catch all (an event and its bytes take about 1.5 KB).
DEFAULT_LIMIT = 16384
# Scripts may take up to ~1 MB an event: what is kept is bounded in bytes too (the decoded event
# counted as its bytes again), so a reader that stalls costs at most this much.
DEFAULT_BYTES = 32 * 1024 * 1024


class SharedDecoder:
    def __init__(self, limit: int = DEFAULT_LIMIT, max_bytes: int = DEFAULT_BYTES) -> None:
        self._limit, self._max_bytes = limit, max_bytes
        self._bytes = 0
        # Ordered so the oldest goes in O(1): a plain dict's first key is found by walking past the
        # holes earlier removals left, up to thousands a time once one reader is past the limit.
        self._items: OrderedDict[int, tuple[str, bytes, Item]] = OrderedDict()
        self.hits = 0

    def decode(self, seq: int, subject: str, data: bytes) -> Item:
        kept = self._items.pop(seq, None)
        if kept is not None:
            self._bytes -= _cost(kept[1])
            if kept[0] == subject and kept[1] == data:
                self.hits += 1
                return kept[2]
        item = decode(subject, data)
        cost = _cost(data)
        if cost > self._max_bytes:
            return item
        while self._items and (len(self._items) >= self._limit or self._bytes + cost > self._max_bytes):
            self._bytes -= _cost(self._items.popitem(last=False)[1][1])
        self._items[seq] = (subject, data, item)
        self._bytes += cost
        return item

    @property
    def kept_bytes(self) -> int:
        return self._bytes


def _cost(data: bytes) -> int:
    return 2 * len(data)
