"""The projector's upsert of job rows goes to asyncpg without SQLAlchemy's handling of each value:
it must store exactly what SQLAlchemy's own execution of the statement stores (SQL NULL and JSON
null told apart, JSON as serialized, booleans), inserting and updating alike, and fail alike."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import events as ev
from conductor_projector import sink
from conductor_projector.faults import Fault, classify
from conductor_projector.operations import fold_jobs, to_operations
from tests.unit.scheduling import submitted

T = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _rows() -> list[dict[str, Any]]:
    """Rows as a batch leaves them: new jobs, one placed and started, one ended, one of a workflow."""
    events: list[tuple[int, ev.Event]] = [
        (1, submitted(environment={"A": "1", "é": 'q"uote'}, requeue=True)),
        (2, submitted().model_copy(update={"standard_error": "err-%j", "time_limit_s": None})),
        (3, ev.JobPlaced(job_id=1, node="n", cores=(0, 3), memory_mb=5, occurred_at=T)),
        (4, ev.JobStarted(job_id=1, node="n", pid=77, occurred_at=T)),
        (5, ev.JobFailed(job_id=2, node="n", exit_code=None, message="gone", occurred_at=T)),
        (6, ev.JobCancelRequested(job_id=1)),
        (8, submitted(workflow_id="w", workflow_index=2, parent_indices=(0, 1), dependency=None)),
    ]
    rows: dict[int, dict[str, Any]] = {}
    fold_jobs(rows, [op for seq, event in events for op in to_operations(seq, event)], sink._JOB_COLUMNS)
    return [rows[job_id] for job_id in sorted(rows)]


async def _stored(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT ROW(jobs.*)::text FROM jobs ORDER BY job_id"))
        return [str(r[0]) for r in result]


async def test_the_driver_upsert_stores_what_sqlalchemy_stores(engine: AsyncEngine) -> None:
    rows = _rows()
    changed = [dict(rows[0], state="COMPLETED", cores=None, exit_code=0, end_time=T, cancel_requested=False)]
    async with engine.begin() as conn:
        await conn.execute(sink._UPSERT_JOBS, rows)
        await conn.execute(sink._UPSERT_JOBS, changed)
    expected = await _stored(engine)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM jobs"))
        await sink._upsert_jobs_rows(conn, rows)
        await sink._upsert_jobs_rows(conn, changed)
    assert await _stored(engine) == expected
    assert "null" in expected[0] and ",," in expected[0]  # JSON null and SQL NULL both there, apart


async def test_a_value_postgres_refuses_fails_as_it_did(engine: AsyncEngine) -> None:
    row = dict(_rows()[0], pid=2**40)
    for upsert in (
        lambda conn: conn.execute(sink._UPSERT_JOBS, [row]),
        lambda conn: sink._upsert_jobs_rows(conn, [row]),
    ):
        with pytest.raises(DBAPIError) as raised:
            async with engine.begin() as conn:
                await upsert(conn)
        assert classify(raised.value) is Fault.DATA
