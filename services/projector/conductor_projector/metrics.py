"""The projector's counters (in the default registry; serving them over HTTP is another step)."""

from __future__ import annotations

from prometheus_client import Counter

DEAD_LETTERS = Counter(
    "conductor_projector_dead_letters", "Events the projector could not apply: recorded in dead_letters and skipped"
)
ALTERED_SUBMISSIONS = Counter(
    "conductor_projector_altered_submissions",
    "Submissions stored with fields changed (NUL, out of range) because PostgreSQL refused them as they were",
)
RETRIES = Counter(
    "conductor_projector_retries", "Times the projector backed off and tried again (PostgreSQL or NATS away, or a bug)"
)
