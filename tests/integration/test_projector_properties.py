"""The read models do not depend on how the log was cut into batches, nor on batches replayed after
a crash, nor on the rows a projector keeps between its batches (also when another projector applies
some of them), also when the log holds events PostgreSQL cannot store as they are (stored altered or
dead-lettered, once): a property test against the real PostgreSQL."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_projector import sink
from conductor_projector import tables as t
from conductor_projector.operations import Undecodable
from conductor_projector.row_cache import RowCache
from tests.unit.scheduling import node, submitted


def _log(steps: list[tuple[str, int]]) -> list[tuple[int, sink.Item]]:
    log: list[tuple[int, sink.Item]] = [(1, node("n1", 4))]
    jobs: list[int] = []
    for kind, pick in steps:
        seq = len(log) + 1
        target = jobs[pick % len(jobs)] if jobs else None
        event: sink.Item | None = None
        if kind == "submit" or target is None:
            event = submitted()
            jobs.append(seq)
        elif kind == "unstorable submit":  # stored with its fields changed
            event = submitted().model_copy(update={"name": "a\x00b", "memory_mb": 2**40})
            jobs.append(seq)
        elif kind == "garbage":
            event = Undecodable(subjects.SUBMITTED, b"\x00garbage", "not an event")
        elif kind == "unstorable start":  # a dead letter when its job is still active
            event = ev.JobStarted(job_id=target, node="n1", pid=2**40)
        elif kind == "place":
            event = ev.JobPlaced(job_id=target, node="n1", cores=(0,), memory_mb=100)
        elif kind == "start":
            event = ev.JobStarted(job_id=target, node="n1", pid=100 + seq)
        elif kind == "cancel":
            event = ev.JobCancelRequested(job_id=target)
        elif kind == "reason":
            event = ev.JobReasonChanged(job_id=target, reason="Resources")
        else:
            outcomes: dict[str, ev.Event] = {
                "complete": ev.JobCompleted(job_id=target, node="n1"),
                "fail": ev.JobFailed(job_id=target, node="n1", exit_code=pick % 5 + 1),
                "cancelled": ev.JobCancelled(job_id=target),
            }
            event = outcomes[kind]
        log.append((seq, event))
    return log


async def _rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(select(t.jobs).order_by(t.jobs.c.job_id))
        letters = await conn.execute(select(t.dead_letters).order_by(t.dead_letters.c.stream_seq))
        dead = [{k: v for k, v in r.items() if k not in ("consumer", "recorded_at")} for r in letters.mappings()]
        return [dict(r) for r in result.mappings()] + dead


steps = st.lists(
    st.tuples(
        st.sampled_from(
            [
                *("submit", "place", "start", "cancel", "reason", "complete", "fail", "cancelled"),
                *("unstorable submit", "garbage", "unstorable start"),
            ]
        ),
        st.integers(0, 20),
    ),
    max_size=25,
)


# Found by this test: a job's memory stored clamped to INTEGER, placed on a node that already had some
# allocated, overflowed the node's INTEGER sum event by event but not in a batch that netted an end
# out first (the node's sums are BIGINT since).
_OVERFLOW = [("submit", 0)] * 3 + [("place", 0)] * 8 + [("unstorable submit", 0), ("submit", 0), ("submit", 0)]
_OVERFLOW += [("place", 3), ("complete", 0)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=steps,
    cuts=st.lists(st.integers(1, 8), min_size=1, max_size=10),
    replay=st.integers(0, 3),
    kept=st.integers(0, 4),
    other=st.integers(0, 3),
)
@example(steps=_OVERFLOW, cuts=[3], replay=0, kept=4, other=0)
async def test_batches_and_replays_do_not_change_the_result(
    engine: AsyncEngine, steps: list[tuple[str, int]], cuts: list[int], replay: int, kept: int, other: int
) -> None:
    """``kept``: how many rows the projector keeps between batches; every ``other``-th batch is
    applied by another projector, which keeps none."""
    log = _log(steps)
    await sink.reset(engine)
    await sink.apply_batch(engine, "whole", log)  # the reference: everything at once, once
    expected = await _rows(engine)

    await sink.reset(engine)
    rows = RowCache(kept)
    i, n = 0, 0
    while i < len(log):
        size = cuts[n % len(cuts)]
        batch = log[i : i + size]
        await sink.apply_batch(engine, "cut", batch, kept=None if other and n % other == other - 1 else rows)
        if replay and n % replay == 0:  # a crash after commit, before the position was read back
            await sink.apply_batch(engine, "cut", log[max(0, i - size) : i + size], kept=rows)
        i, n = i + size, n + 1
    assert await _rows(engine) == expected
