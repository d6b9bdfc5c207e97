from __future__ import annotations

from conductor_platform.settings import CommonSettings


class SchedulerSettings(CommonSettings):
    lease_ttl_s: float = 10.0
    # Off only in tests that prove fencing alone keeps two deciding schedulers from double-placing.
    use_lease: bool = True
    queue_depth: int = 100
