from __future__ import annotations

from conductor_platform.settings import CommonSettings


class ProjectorSettings(CommonSettings):
    # The name its position is stored under: two projectors with different names keep separate tables' cursors.
    consumer: str = "projector"
    batch_size: int = 500
    # Under load, wait this long for more events before applying a batch: far fewer transactions.
    linger_s: float = 0.05
    # After a failure (PostgreSQL or NATS away): the first wait before trying again, doubling up to the last.
    retry_first_s: float = 0.2
    retry_max_s: float = 5.0
