"""The scheduler service around the pure core. One cycle:

    load   - an ordered consumer replays the whole stream from the start, then follows it;
    fold   - every event goes through ``evolve`` into ``ClusterState``;
    decide - once caught up (nothing pending) and while holding the lease, ``decide(state)``;
    publish- each decision fenced on the last scheduler decision folded; a rejection means another
             scheduler decided meanwhile, so we keep folding and decide again from the newer state.

It does not decide again until its own decisions have come back through the fold, so the state it
decides from always includes everything it has already published.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus, FencedOut, connect, next_batch, read_from
from conductor_scheduler.lease import Lease
from conductor_scheduler.policy import decide
from conductor_scheduler.settings import SchedulerSettings
from conductor_scheduler.state import ClusterState, evolve

log = logging.getLogger("conductor.scheduler")


class Scheduler:
    def __init__(self, bus: Bus, settings: SchedulerSettings, lease: Lease | None) -> None:
        self.bus, self.settings, self.lease = bus, settings, lease
        self.state = ClusterState()
        self.awaiting_seq = 0  # our newest published decision, not yet folded back
        self.placed = 0

    def fold(self, seq: int, subject: str, event: ev.Event) -> None:
        evolve(self.state, seq, event, by_scheduler=subjects.is_scheduler_subject(subject))

    async def leads(self) -> bool:
        return True if self.lease is None else await self.lease.tick()

    async def decide_and_publish(self) -> None:
        if self.state.last_seq < self.awaiting_seq:
            return
        decisions = decide(self.state, queue_depth=self.settings.queue_depth)
        expected = self.state.last_scheduler_seq
        for decision in decisions:
            try:
                expected = await self.bus.publish_fenced(decision, expected)
            except FencedOut:
                log.info("fenced out: another scheduler decided; refolding", extra={"expected": expected})
                break
            self.awaiting_seq = expected
            if isinstance(decision, ev.JobPlaced):
                self.placed += 1
                log.info("placed", extra={"job_id": decision.job_id, "node": decision.node, "cores": decision.cores})


async def run(settings: SchedulerSettings, stop: asyncio.Event | None = None) -> Scheduler:
    stop = stop or asyncio.Event()
    bus = await connect(settings.nats_url, name="conductor-scheduler")
    lease = None
    if settings.use_lease:
        kv = await bus.leases(settings.lease_ttl_s)
        holder = settings.scheduler_id or f"scheduler-{uuid.uuid4().hex[:8]}"
        lease = Lease(kv, subjects.SCHEDULER_LEASE_KEY, holder, settings.lease_ttl_s)
    scheduler = Scheduler(bus, settings, lease)
    sub = await read_from(bus, 1)
    log.info("scheduler started; replaying the log")
    try:
        while not stop.is_set():
            msgs = await next_batch(sub, 1000, wait_s=0.5)
            for msg in msgs:
                scheduler.fold(msg.metadata.sequence.stream, msg.subject, ev.decode(msg.data))
            if msgs and msgs[-1].metadata.num_pending > 0:
                continue  # not caught up: decide only from the whole log
            try:
                if await scheduler.leads():
                    await scheduler.decide_and_publish()
            except Exception:  # NATS away or slow: keep the state, try again shortly
                log.exception("deciding failed; retrying")
                await asyncio.sleep(1)
    finally:
        if lease is not None:
            await lease.release()
        await sub.unsubscribe()
        await bus.close()
    return scheduler
