from __future__ import annotations

from conductor_platform.settings import CommonSettings


class SchedulerSettings(CommonSettings):
    lease_ttl_s: float = 10.0
    # Who holds the lease. Random by default; a stable id (one per scheduler instance) lets a
    # restarted scheduler take its lease back at once instead of waiting for it to expire.
    scheduler_id: str = ""
    # Off only in tests that prove fencing alone keeps two deciding schedulers from double-placing.
    use_lease: bool = True
    queue_depth: int = 100
