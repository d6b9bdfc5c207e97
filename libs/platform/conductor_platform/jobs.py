"""A job's account and workflow, read from the log itself: its JobSubmitted is at stream sequence =
job id. A bounded LRU in front, filled also by the JobSubmitted a reader goes by, so a job is looked
up in NATS at most once while it is remembered. For readers of the log that must not wait for (or
depend on) the read models: the event feed, the public subjects. A job whose submission is no longer
in the stream (``conductor compact`` archived it, its later events stay) is asked of ``archived``,
where given (the feed: the read models, which compaction never passes)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from conductor_contracts.public import JobContext, job_context
from conductor_platform.bus import Bus, submission

log = logging.getLogger("conductor.jobs")


class JobDirectory:
    def __init__(
        self, capacity: int = 100_000, archived: Callable[[int], Awaitable[JobContext | None]] | None = None
    ) -> None:
        self.capacity = capacity
        self._archived = archived
        self.known: OrderedDict[int, JobContext | None] = OrderedDict()
        # One object per distinct context: a full directory of jobs of a few accounts then holds a
        # few contexts, not one copy (with its strings) per job, about 150 bytes each.
        self.shared: dict[JobContext, JobContext] = {}

    def remember(self, job_id: int, context: JobContext | None) -> None:
        if context is not None:
            if len(self.shared) >= self.capacity:
                self.shared.clear()
            context = self.shared.setdefault(context, context)
        self.known[job_id] = context
        self.known.move_to_end(job_id)
        while len(self.known) > self.capacity:
            self.known.popitem(last=False)

    async def of(self, bus: Bus, job_id: int) -> JobContext | None:
        """The job's context; None when no submission is at that sequence (remembered too: a job's
        events come after its JobSubmitted, so one that is not there will not appear later)."""
        if job_id in self.known:
            self.known.move_to_end(job_id)
            return self.known[job_id]
        submitted = await submission(bus, job_id)
        context = None if submitted is None else job_context(submitted)
        if context is None and self._archived is not None:
            try:
                context = await self._archived(job_id)
            except Exception as err:  # asked again next time: nothing is remembered of a failure
                log.warning("no context for job %d: %s", job_id, f"{type(err).__name__}: {err}")
                return None
        self.remember(job_id, context)
        return context
