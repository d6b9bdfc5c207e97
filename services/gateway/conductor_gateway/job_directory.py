"""A job's account and workflow, read from the log itself: its JobSubmitted is at stream sequence =
job id. A bounded LRU cache in front, filled also by the JobSubmitted the feeds read go by, so
a job is looked up in NATS at most once while it is remembered. The read models are not asked:
the feed must not lag behind (or depend on) the projector."""

from __future__ import annotations

from collections import OrderedDict

from conductor_gateway.backends import submission
from conductor_gateway.feed_items import UNKNOWN_JOB, JobContext, context_of
from conductor_platform.bus import Bus


class JobDirectory:
    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._known: OrderedDict[int, JobContext] = OrderedDict()

    def remember(self, job_id: int, context: JobContext) -> None:
        self._known[job_id] = context
        self._known.move_to_end(job_id)
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)

    async def of(self, bus: Bus, job_id: int) -> JobContext:
        known = self._known.get(job_id)
        if known is not None:
            self._known.move_to_end(job_id)
            return known
        context = await self._read(bus, job_id)
        self.remember(job_id, context)
        return context

    async def _read(self, bus: Bus, job_id: int) -> JobContext:
        # A job's events come after its JobSubmitted in the log: one that is not there (removed, or the
        # id was never a submission) will not appear later, so UNKNOWN_JOB is remembered like any other.
        submitted = await submission(bus, job_id)
        return context_of(submitted) if submitted is not None else UNKNOWN_JOB
