"""The node's heartbeat: its key in the heartbeats bucket, rewritten every ``heartbeat_s``.

The scheduler declares a node lost (NodeLost) after ``node_lost_after_s`` without one. The executor
cannot know whether it has been: so while it cannot write its key it counts the silence itself
(``Silence``), and past the same bound it fences itself (``liveness.py``): the jobs that the
scheduler would have requeued elsewhere are killed here, so that no job runs twice.

Nothing here ends the executor: a failed write is logged once per outage, and tried again every beat.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

import nats.js.errors
from nats.js.kv import KeyValue

from conductor_contracts import events as ev
from conductor_contracts import heartbeats, subjects
from conductor_platform.bus import Bus
from conductor_platform.retry import pause

log = logging.getLogger("conductor.executor.heartbeat")


class Silence:
    """How long the heartbeat has failed, and whether that is long enough to fence (pure: the clock is
    given, so a test can move it). Fencing happens once per silence; a beat that gets through ends it."""

    def __init__(self, lost_after_s: float, now: float) -> None:
        self.lost_after_s = lost_after_s
        self.last_ok = now  # a start counts as a beat: the silence of a previous process is not known
        self.failing = False
        self.fenced = False

    def ok(self, now: float) -> float | None:
        """A beat got through; how long the silence it ends lasted, if there was one."""
        silent = now - self.last_ok if self.failing else None
        self.last_ok, self.failing, self.fenced = now, False, False
        return silent

    def failed(self, now: float) -> bool:
        """A beat failed; True once when the silence has just become long enough to fence."""
        self.failing = True
        if self.fenced or now - self.last_ok <= self.lost_after_s:
            return False
        self.fenced = True
        return True

    def silent_for(self, now: float) -> float:
        return now - self.last_ok


def value(registration: ev.NodeRegistered, now: float, instance: str = "", lost_after_s: float = 0.0) -> bytes:
    """What the key holds (``heartbeats.encode``), written by this process. ``lost_after_s``: its own
    silence before it fences, which the scheduler waits at least as long as (its liveness.py)."""
    return heartbeats.encode(
        registration, now, instance=instance, lost_after_s=lost_after_s, pid=os.getpid(), host=socket.gethostname()
    )


class Replaced(Exception):
    """Another instance of the node's executor wrote its heartbeat over this one's."""


class Heartbeat:
    def __init__(
        self,
        registration: Callable[[], ev.NodeRegistered],
        every_s: float,
        lost_after_s: float,
        on_silence: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
        on_beat: Callable[[], None] = lambda: None,
        instance: str = "",
        on_replaced: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._registration = registration
        self.instance = instance
        # Each beat is written over the revision of the one before: a value of another instance in
        # between means this executor was frozen or cut off long enough for another of its node to
        # take it over (twins.py), and it must give the node up (``on_replaced``, once).
        self._revision: int | None = None
        self._on_replaced = on_replaced
        self.replaced = False
        self.every_s = every_s
        self._on_silence = on_silence
        self._on_beat = on_beat
        self._clock = clock
        self.silence = Silence(lost_after_s, clock())
        self._kv: KeyValue | None = None
        self._kv_of: Bus | None = None

    async def _write(self, bus: Bus | None) -> None:
        # While disconnected nats-py would buffer the put and wait out the JetStream timeout: a beat
        # must fail at once and be counted as silence instead.
        if bus is None or not bus.nc.is_connected:
            raise ConnectionError("not connected to NATS")
        if self._kv is None or self._kv_of is not bus:
            self._kv = await bus.heartbeats()
            self._kv_of = bus
        registration = self._registration()
        written = value(registration, time.time(), self.instance, self.silence.lost_after_s)
        key = subjects.heartbeat_key(registration.node)
        if self._revision is not None:
            try:
                self._revision = await self._kv.update(key, written, last=self._revision)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                if (other := await self._writer(key, self._revision)) is not None:
                    raise Replaced(other) from None
        self._revision = await self._kv.put(key, written)

    def written(self, revision: int | None) -> None:
        """The key's revision after a beat written elsewhere (the twin check's first): the next beat
        is written over it."""
        self._revision = revision

    async def _writer(self, key: str, mine: int) -> str | None:
        """Where the instance that wrote the key over this one's revision ``mine`` runs, if another
        instance of this node's executor: None when it is this one, or none that names itself (the key
        deleted, an older executor), or when the key went back below ``mine`` (nats-server lost its
        last writes in a crash: what is left may be the beat of an instance this one replaced)."""
        assert self._kv is not None
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        beat = heartbeats.decode(entry.value)
        if entry.revision is not None and entry.revision < mine:
            return None
        return beat.where if beat.instance not in (None, self.instance) else None

    async def beat_once(self, bus: Bus | None) -> None:
        try:
            await asyncio.wait_for(self._write(bus), max(1.0, self.every_s))
        except Replaced as err:
            self.replaced = True
            self._on_replaced(str(err))
            return
        except Exception as err:
            self._kv = None  # looked up again: the bucket may have been recreated meanwhile
            first = not self.silence.failing
            if self.silence.failed(self._clock()):
                self._on_silence(self.silence.silent_for(self._clock()))
            # Once per outage, not every beat; before the first connection, connecting says it.
            if first and bus is not None:
                log.warning("heartbeat failed; retrying every beat", extra={"error": str(err) or type(err).__name__})
            return
        self._on_beat()
        silent = self.silence.ok(self._clock())
        if silent is not None:
            log.info("heartbeat written again", extra={"silent_s": round(silent, 1)})

    async def run(self, bus: Callable[[], Bus | None], stop: asyncio.Event) -> None:
        """Until ``stop`` (or cancelled); ``bus``: the executor's connection, None until it has one."""
        while not stop.is_set() and not self.replaced:
            try:
                await self.beat_once(bus())
            except Exception:  # a bug in a beat must not end the beating
                log.exception("heartbeat failed unexpectedly")
            await pause(stop, self.every_s)
