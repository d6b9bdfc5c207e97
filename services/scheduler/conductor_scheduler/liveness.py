"""Which nodes have gone silent: the one decision of the scheduler that depends on time.

Each executor rewrites its key in the heartbeats bucket every few seconds; the scheduler watches the
bucket and notes, on its own clock, when it last heard from each node (clocks of other machines are
not compared). A node not heard from for ``lost_after_s`` is declared lost by a NodeLost in the log,
a decision like any other: fenced, folded, and replayed as it was. Every (re)start of the watch gives
every node a full ``lost_after_s`` again, so a scheduler that has just started, or that was cut off
from NATS with everyone else, declares nobody lost before hearing from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.errors import TimeoutError as NatsTimeoutError

from conductor_contracts import events as ev
from conductor_contracts import heartbeats, subjects
from conductor_platform.bus import Bus
from conductor_platform.retry import Backoff
from conductor_scheduler.state import ClusterState

log = logging.getLogger("conductor.scheduler")


class Liveness:
    def __init__(self, lost_after_s: float, clock: Callable[[], float]) -> None:
        self.lost_after_s = lost_after_s
        self.clock = clock
        self.since = clock()  # nobody is silent for longer than we have been listening
        self.heard: dict[str, float] = {}
        self.revisions: dict[str, int] = {}
        self.limits: dict[str, float] = {}  # what each node's executor takes for the silence that loses it
        # The executor instance each node's heartbeat names, and, for a node whose executor was
        # replaced (state.Node.replaced), when the new instance was first heard.
        self.instances: dict[str, str] = {}
        self.replaced_heard: dict[str, float] = {}
        self.replaced_limit: dict[str, float] = {}  # the silence the instance replaced fences after
        # The connection (its count of reconnects) on which the current watch delivered every key.
        # Nobody is declared lost on another one: heartbeats written meanwhile may not be heard yet.
        self.watched_on: int | None = None

    def listening(self) -> None:
        self.since = self.clock()

    def heard_from(self, node: str, revision: int | None = None, value: bytes | None = None) -> None:
        """A heartbeat (a new ``revision`` of the node's key, its ``value``), or a registration (no
        revision)."""
        if revision is not None:
            if self.revisions.get(node) == revision:
                return  # the value we saw already, delivered again by a new watch
            self.revisions[node] = revision
        self.heard[node] = self.clock()
        if value is None:
            return
        beat = heartbeats.decode(value)
        own, instance = beat.lost_after_s, beat.instance
        if instance and instance != self.instances.get(node):
            if node in self.instances:
                # Counted from the first beat of the new instance heard, not the last of the old one:
                # a watch that stalled may not have delivered the old one's last beats. Its own silence
                # limit is kept: its requeue jobs are fenced after that, not after the new one's.
                self.replaced_heard[node] = self.clock()
                self.replaced_limit[node] = self.limits.get(node, 0.0)
            self.instances[node] = instance
        if own is not None:
            self.limits[node] = own

    def limit_of(self, node: str, own: float | None = None) -> float:
        """The silence after which ``node`` is lost: ours, or the node's own if longer, up to ten times
        ours. Its executor fences its requeue jobs two beats short of its own; with 90 s there against
        our 30 s, a job we requeued at 30 s ran on there until 86 s, twice at once. Unbounded, an
        executor set to 1e9 kept its dead node UP and its jobs RUNNING for good."""
        own = self.limits.get(node, 0.0) if own is None else own
        return max(self.lost_after_s, min(own, OWN_LIMIT_TIMES * self.lost_after_s))

    def silent(self, state: ClusterState, connection: int) -> list[ev.NodeLost]:
        if self.watched_on != connection:
            return []
        now = self.clock()
        lost = []
        for name in sorted(state.nodes):
            if state.nodes[name].lost:
                continue
            silence = now - max(self.heard.get(name, self.since), self.since)
            limit = self.limit_of(name)
            if silence > limit:
                reason = f"no heartbeat for {silence:.0f} s (the limit is {limit:g} s)"
                lost.append(ev.NodeLost(node=name, reason=reason))
            elif (replaced := self._replaced_for(state, name, now)) is not None and replaced > (
                replaced_limit := max(limit, self.limit_of(name, self.replaced_limit.get(name, 0.0)))
            ):
                # As long as a silence: the instance replaced has fenced its requeue jobs by then
                # (its own liveness.py, or their supervisors' lease), so none runs twice.
                reason = (
                    f"its executor was replaced by another, which cannot adopt the runs of the one before: "
                    f"they are over ({replaced:.0f} s without it, the limit is {replaced_limit:g} s)"
                )
                lost.append(ev.NodeLost(node=name, reason=reason))
        return lost

    def _replaced_for(self, state: ClusterState, name: str, now: float) -> float | None:
        """How long the instance a node's executor replaced has been silent, or None: the node's
        executor was not replaced, or the heartbeat of the one that registered is not heard yet."""
        node = state.nodes[name]
        if not node.replaced or self.instances.get(name) != node.instance:
            return None
        return now - max(self.replaced_heard.get(name, self.since), self.since)


# An executor's own CONDUCTOR_NODE_LOST_AFTER_S, as its heartbeat says it, is taken up to this many
# times the scheduler's (30 s: 300 s, Slurm's default SlurmdTimeout).
OWN_LIMIT_TIMES = 10.0


def connection_of(bus: Bus) -> int:
    """Which connection this is: nats-py counts its reconnects."""
    return int(bus.nc.stats.get("reconnects", 0))


# A watch is started anew this often: a watch that stalled without an error (its consumer lost in a
# NATS restart) must not look like silent nodes. A new watch delivers every key's current revision,
# and only a revision not seen before counts as a heartbeat.
REWATCH_S = 10.0


async def watch(bus: Callable[[], Bus], liveness: Liveness, stop: asyncio.Event, retry: Backoff) -> None:
    """Follow the heartbeats bucket until ``stop``; a failure (NATS away) starts the watch again and
    gives every node its full silence again."""
    while not stop.is_set():
        watcher = None
        try:
            connection = connection_of(bus())
            watcher = await (await bus().heartbeats()).watchall()
            retry.reset()
            until = liveness.clock() + REWATCH_S
            while not stop.is_set() and liveness.clock() < until and connection_of(bus()) == connection:
                try:
                    entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
                except (TimeoutError, NatsTimeoutError):
                    continue
                if entry is None:  # every key's current value delivered
                    if liveness.watched_on != connection:
                        liveness.listening()  # a new connection: everyone gets a full silence again
                        liveness.watched_on = connection
                elif entry.key:
                    liveness.heard_from(subjects.node_of_heartbeat_key(entry.key), entry.revision, entry.value)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            liveness.watched_on = None
            log.warning("watching node heartbeats failed; retrying", extra={"error": f"{type(err).__name__}: {err}"})
            await retry.wait(stop)
        finally:
            if watcher is not None:
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]
