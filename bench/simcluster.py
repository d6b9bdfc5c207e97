"""Simulated nodes for the scale benchmark: registrations, heartbeats and an executor that "runs" each
placed job for a while without spawning anything. Everything is published pipelined (no ack awaited
per message), the way a fleet of executors loads NATS, not the way one awaits its own reports."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import time
import uuid
from dataclasses import dataclass, field

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor.heartbeat import value
from conductor_platform.bus import Bus

PLACEMENTS = subjects.placements_for("*")


def node_name(number: int) -> str:
    return f"sim{number:05d}"


async def register(bus: Bus, nodes: int, cores: int, memory_mb: int) -> list[ev.NodeRegistered]:
    registrations = [ev.NodeRegistered(node=node_name(i), cpus=cores, memory_mb=memory_mb) for i in range(nodes)]
    for registration in registrations:
        await bus.nc.publish(subjects.subject_for(registration), ev.encode(registration))
    await bus.nc.flush()
    return registrations


async def heartbeats(bus: Bus, registrations: list[ev.NodeRegistered], every_s: float, stop: asyncio.Event) -> None:
    """Every node's key in the heartbeats bucket, rewritten every ``every_s`` (what executors do)."""
    await bus.heartbeats()  # the bucket, created if no scheduler made it yet
    prefix = f"$KV.{subjects.HEARTBEATS_BUCKET}."
    while not stop.is_set():
        now = time.time()
        for registration in registrations:
            await bus.nc.publish(prefix + subjects.heartbeat_key(registration.node), value(registration, now))
        await bus.nc.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


@dataclass
class Executor:
    """Answers every JobPlaced with JobStarted and, ``run_s`` (± half, seeded) later, JobCompleted."""

    bus: Bus
    run_s: float
    seed: int = 1
    placed_at: list[float] = field(default_factory=list)  # each placement's time (its event's), in order
    completed: int = 0
    _due: list[tuple[float, int, str, int]] = field(default_factory=list)

    async def follow(self, stop: asyncio.Event) -> None:
        name = f"sim-executor-{uuid.uuid4().hex[:8]}"
        config = ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            filter_subject=PLACEMENTS,
            inactive_threshold=60.0,
        )
        await self.bus.js.add_consumer(self.bus.stream, config=config)
        sub = await self.bus.js.pull_subscribe_bind(consumer=name, stream=self.bus.stream)
        rng = random.Random(self.seed)
        completing = asyncio.create_task(self._complete(stop))
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(1000, timeout=0.2)
                except (NatsTimeoutError, TimeoutError):
                    continue
                now = time.monotonic()
                for msg in msgs:
                    placed = ev.decode(msg.data)
                    assert isinstance(placed, ev.JobPlaced)
                    self.placed_at.append(time.time())
                    started = ev.JobStarted(job_id=placed.job_id, node=placed.node, pid=1, run=placed.run)
                    await self.bus.nc.publish(
                        subjects.subject_for(started), ev.encode(started), headers=_dedupe(started)
                    )
                    due = now + self.run_s * rng.uniform(0.5, 1.5)
                    heapq.heappush(self._due, (due, placed.job_id, placed.node, placed.run))
                await self.bus.nc.flush()
        finally:
            completing.cancel()

    async def _complete(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.monotonic()
            sent = 0
            while self._due and self._due[0][0] <= now:
                _, job_id, node, run = heapq.heappop(self._due)
                completed = ev.JobCompleted(job_id=job_id, node=node, run=run)
                await self.bus.nc.publish(
                    subjects.subject_for(completed), ev.encode(completed), headers=_dedupe(completed)
                )
                sent += 1
            if sent:
                await self.bus.nc.flush()
                self.completed += sent
            await asyncio.sleep(0.02)


def _dedupe(event: ev.Event) -> dict[str, str]:
    return {"Nats-Msg-Id": subjects.dedupe_id(event)}
