from __future__ import annotations

from pydantic import Field

from conductor_platform.settings import CommonSettings


class ProjectorSettings(CommonSettings):
    # The name its position is stored under. The read models have one writer: a projector of another
    # name on the same database makes both read back every row they touch (sink._apply).
    consumer: str = "projector"
    # Events per transaction at most: a catch-up or a rebuild commits this many at a time (the
    # transactions, not the events, cost the most); live, a batch holds what arrived in linger_s.
    batch_size: int = Field(default=2000, ge=1)
    # Under load, wait this long for more events before applying a batch: far fewer transactions.
    linger_s: float = Field(default=0.05, ge=0)
    # CONDUCTOR_PUBLIC_SUBJECTS: publish every event again on the public subjects (its type, account,
    # workflow and job in the subject; conductor_contracts.public), kept public_retention_s.
    public_subjects: bool = True
    public_retention_s: float = Field(default=7 * 24 * 3600.0, gt=0, le=100 * 365 * 24 * 3600.0)  # NATS: ns in int64
    # CONDUCTOR_KEPT_ROWS: rows of unfinished jobs kept between batches (row_cache; ~2-3 KB each),
    # which spares a live batch reading back the rows the one before it wrote. 0: none kept.
    kept_rows: int = Field(default=10_000, ge=0, le=1_000_000)
    # CONDUCTOR_DATABASE_TIMEOUT_S: the most one statement (a batch's upsert: well under a second) or
    # a connect waits on PostgreSQL before the batch is retried; a hung server held it for ever.
    database_timeout_s: float = Field(default=60.0, gt=0, le=3600)
