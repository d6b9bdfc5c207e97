"""The scheduler's decoding of the log: ``conductor_contracts.events.decode`` with pydantic's string
cache limited to keys.

pydantic-core by default keeps every short string it parses (values as well as keys) in a cache of
16,384 entries, each entry living until a later string takes its slot. Nearly every event brings
new values (its id, its time, a job's name), so the cache keeps a stream of fresh small objects alive
for a while, scattered over the memory pools that a 100k-deep queue of pending jobs took: a pool that
holds one of them is never given back, and the scheduler's RSS stayed near the peak of the deepest
queue long after it drained. The keys are the same few names in every event, so caching them is
still worth it and holds nothing new; the decoding costs the same (bench/scale.py's CPU per placement).
"""

from __future__ import annotations

from pydantic import ConfigDict, TypeAdapter

from conductor_contracts import events as ev

_ADAPTER: TypeAdapter[ev.Event] = TypeAdapter(ev.Event, config=ConfigDict(cache_strings="keys"))


def decode(data: bytes) -> ev.Event:
    """The event in ``data``, as ``ev.decode`` gives it (the same models, the same errors)."""
    return _ADAPTER.validate_json(data)
