"""Leadership: one key in NATS KV, created by whoever gets there first and renewed by revision.

A lease that is not renewed expires with the bucket's max age and another scheduler takes it. A stale
leader that still believes it leads is harmless: its decisions are fenced (see ``Bus.publish_fenced``).
"""

from __future__ import annotations

import logging
import time

from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

log = logging.getLogger("conductor.scheduler.lease")

# What this process did with the lease (a standby's become-leader shows as one here).
LEASE_CHANGES = Counter(
    "conductor_scheduler_lease_changes", "Times this scheduler became or stopped being the leader", ["change"]
)
LEADER = Gauge("conductor_scheduler_leader", "1 while this scheduler holds the lease")


class Lease:
    def __init__(self, kv: KeyValue, key: str, holder: str, ttl_s: float) -> None:
        self.kv, self.key, self.holder, self.ttl_s = kv, key, holder, ttl_s
        self.revision: int | None = None
        self.renewed_at = 0.0

    @property
    def held(self) -> bool:
        return self.revision is not None and time.monotonic() - self.renewed_at < self.ttl_s

    async def tick(self) -> bool:
        """Acquire or renew when due; returns whether we hold the lease now."""
        if self.held and time.monotonic() - self.renewed_at < self.ttl_s / 3:
            return True
        try:
            if self.revision is None:
                self.revision = await self._acquire()
                LEASE_CHANGES.labels("acquired").inc()
                log.info("became leader", extra={"holder": self.holder})
            else:
                self.revision = await self.kv.update(self.key, self.holder.encode(), last=self.revision)
            self.renewed_at = time.monotonic()
        except (KeyWrongLastSequenceError, NotFoundError):
            if self.revision is not None:
                LEASE_CHANGES.labels("lost").inc()
                log.warning("lost the lease", extra={"holder": self.holder})
            self.revision = None
        except Exception as err:  # NATS unavailable: we cannot prove we lead
            log.warning("lease check failed", extra={"error": str(err)})
            if not self.held:
                if self.revision is not None:
                    LEASE_CHANGES.labels("lost").inc()
                self.revision = None
        LEADER.set(1 if self.held else 0)
        return self.held

    async def _acquire(self) -> int:
        try:
            return int(await self.kv.create(self.key, self.holder.encode()))
        except KeyWrongLastSequenceError:
            # Held. By an earlier run of ours (same holder id, restarted after a crash)? Then take it
            # over now rather than wait for it to expire.
            entry = await self.kv.get(self.key)
            if entry.value != self.holder.encode() or entry.revision is None:
                raise
            return int(await self.kv.update(self.key, self.holder.encode(), last=entry.revision))

    async def release(self) -> None:
        if self.revision is not None:
            try:
                await self.kv.delete(self.key, last=self.revision)
            except Exception as err:
                log.info("lease release failed", extra={"error": str(err)})
            LEASE_CHANGES.labels("released").inc()
            LEADER.set(0)
            self.revision = None
