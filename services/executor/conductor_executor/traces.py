"""The executor's spans, both children of the job's placement (the ``traceparent`` of its JobPlaced
message): ``start`` while the placement is handled (its JobStarted, or the outcome of a job that could
not start, carries it), and ``outcome`` from the job's start to its end (its outcome carries it). The
placement's traceparent is kept in the job's ``process.json``, so that an executor that takes a job
over reports its outcome in the same trace."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.trace import SpanKind

from conductor_platform import tracing

START_SPAN = "conductor.executor.start"
OUTCOME_SPAN = "conductor.executor.outcome"


def _attributes(job_id: int, run: int, node: str) -> dict[str, str | int]:
    return {tracing.JOB_ID: job_id, tracing.RUN: run, tracing.NODE: node}


@contextmanager
def starting(job_id: int, run: int, node: str, placed: str | None) -> Iterator[str | None]:
    """The start span; yields the traceparent its events carry."""
    with tracing.span(START_SPAN, placed, _attributes(job_id, run, node), kind=SpanKind.CONSUMER) as carried:
        yield carried


@contextmanager
def ending(
    job_id: int, run: int, node: str, placed: str | None, outcome: str, started_at: float | None
) -> Iterator[str | None]:
    """The outcome span, from ``started_at`` (the job's start, a Unix time; None: now)."""
    attributes = _attributes(job_id, run, node) | {"conductor.outcome": outcome}
    with tracing.span(OUTCOME_SPAN, placed, attributes, start_time_s=started_at) as carried:
        yield carried
