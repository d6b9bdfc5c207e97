from __future__ import annotations

from pydantic import Field

from conductor_platform.settings import CommonSettings
from conductor_scheduler.policy import MAX_REQUEUES


class SchedulerSettings(CommonSettings):
    lease_ttl_s: float = Field(default=10.0, ge=1, le=3600)  # NATS: a max age of 100 ms at least
    # Who holds the lease. Random by default; a stable id (one per scheduler instance) lets a
    # restarted scheduler take its lease back at once instead of waiting for it to expire.
    scheduler_id: str = ""
    # Off only in tests that prove fencing alone keeps two deciding schedulers from double-placing.
    use_lease: bool = True
    queue_depth: int = Field(default=100, ge=1)
    # CONDUCTOR_MAX_REQUEUES: how many times a requeue job is requeued when its run is lost (Slurm's
    # MaxBatchRequeue); the next loss ends it FAILED.
    max_requeues: int = Field(default=MAX_REQUEUES, ge=0, le=1_000_000)
    # A snapshot of the fold (with the sequence it covers) once this many events were folded since the
    # last one, at most every snapshot_min_interval_s: a starting scheduler replays only what follows.
    snapshot_every_events: int = Field(default=10_000, ge=1)
    snapshot_min_interval_s: float = Field(default=30.0, ge=0)
    # And at least this often while the log moves more slowly: what `conductor compact` may archive is
    # bounded by the newest snapshot (its oldest job not ended), which a quiet system did not move.
    snapshot_max_age_s: float = Field(default=600.0, gt=0)
