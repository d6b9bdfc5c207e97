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

from conductor_contracts import events as ev
from conductor_projector.operations import Undecodable, decode

Item = ev.Event | Undecodable

# In a catch-up of 200,000 events (bench/projector.py) one reader led the other by up to 10,000
# events: 4096 kept only caught 2% of them, 16384 catch all, for at most some 25 MB (an event and its
# bytes take about 1.5 KB).
DEFAULT_LIMIT = 16384


class SharedDecoder:
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        # Ordered so the oldest goes in O(1): a plain dict's first key is found by walking past the
        # holes earlier removals left, up to thousands a time once one reader is past the limit.
        self._items: OrderedDict[int, tuple[str, bytes, Item]] = OrderedDict()
        self.hits = 0

    def decode(self, seq: int, subject: str, data: bytes) -> Item:
        kept = self._items.pop(seq, None)
        if kept is not None and kept[0] == subject and kept[1] == data:
            self.hits += 1
            return kept[2]
        item = decode(subject, data)
        if len(self._items) >= self._limit:
            self._items.popitem(last=False)
        self._items[seq] = (subject, data, item)
        return item
