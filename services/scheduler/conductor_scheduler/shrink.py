"""The fold's dicts made small again once the jobs they held have left.

A Python dict never shrinks when keys are deleted: after a 100k-deep queue drained, the tables of
``pending`` and of the per-job dicts beside it stayed at their peak size (megabytes each, for a queue
of a thousand). Copying a dict builds one sized for what it holds, in the same order; nothing reads
a dict's size, so the fold's decisions are the same. Checked every few thousand events: a copy costs
one pass over what is left, and only a dict at least ``_SPARE`` times too large for its keys is
copied, so the copies cost less over a run than the deletions that made them worth it. The service
also looks when the log is quiet: the last jobs of a drained queue end with no event after them.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

from conductor_scheduler.state import ClusterState

EVERY = 4096  # events between two looks
_SPARE = 8
_ENTRY_BYTES = 40  # about what a key takes in a dict sized for it (index, hash, key, value; room to grow)
_SMALL = 64 * 1024  # a table this small is left as it is
# Jobs not ended have a dict per (account, name): one per job when every name differs. Looked at only
# when they are few, so that a look stays cheap: a big one is one (account, name) with a deep queue.
_FEW_KEYS = 1024
K = TypeVar("K")
V = TypeVar("V")


def oversized(d: dict[Any, Any]) -> bool:
    size = sys.getsizeof(d)
    return size > _SMALL and size > _SPARE * _ENTRY_BYTES * len(d)


def fitted(d: dict[K, V]) -> dict[K, V]:
    """``d``, or a copy of it sized to its keys (in the same order) when it has far more room."""
    return dict(d) if oversized(d) else d


def shrink(state: ClusterState) -> None:
    """Copy every dict of the fold that has far more room than keys."""
    state.pending, state.running, state.reasons = fitted(state.pending), fitted(state.running), fitted(state.reasons)
    for partition, queue in state.queues.items():
        state.queues[partition] = fitted(queue)
    holds = state.holds
    holds.key_of, holds.waiting, holds.watchers = fitted(holds.key_of), fitted(holds.waiting), fitted(holds.watchers)
    if len(holds.active) <= _FEW_KEYS:
        for key, jobs in holds.active.items():
            holds.active[key] = fitted(jobs)
