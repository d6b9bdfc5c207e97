from __future__ import annotations

from conductor_platform.settings import CommonSettings


class ProjectorSettings(CommonSettings):
    # The name its position is stored under: two projectors with different names keep separate tables' cursors.
    consumer: str = "projector"
    batch_size: int = 500
    # Under load, wait this long for more events before applying a batch: far fewer transactions.
    linger_s: float = 0.05
    # CONDUCTOR_PUBLIC_SUBJECTS: publish every event again on the public subjects (its type, account,
    # workflow and job in the subject; conductor_contracts.public), kept public_retention_s.
    public_subjects: bool = True
    public_retention_s: float = 7 * 24 * 3600.0
