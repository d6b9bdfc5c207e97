"""The projector's metrics, in the default registry (served on CONDUCTOR_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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

# Latencies of jobs this projector saw start and end (a restart resumes from its position: nothing
# is observed twice; a --rebuild observes the log again).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
SUBMIT_TO_START = Histogram(
    "conductor_submit_to_start_seconds", "From a job's submission to its start on a node", buckets=_LATENCY_BUCKETS
)
PLACED_TO_START = Histogram(
    "conductor_placed_to_start_seconds", "From a job's placement to its start on the node", buckets=_LATENCY_BUCKETS
)
START_TO_END = Histogram("conductor_start_to_end_seconds", "From a job's start to its end", buckets=_LATENCY_BUCKETS)
BATCH_SIZE = Histogram(
    "conductor_projector_batch_events",
    "Events per batch the projector applied",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000),
)
LAG = Gauge("conductor_projector_lag_events", "Events in the log the projector has not read yet")
