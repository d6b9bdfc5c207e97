"""Attacks on the rows a projector keeps between batches (row_cache) and on the rows a batch does not
read because its position says they are not there: whatever fails, replays, rebuilds or falls back
to event by event in between, the read models end as applying the whole log at once (the real
PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform import localservers
from conductor_platform.localservers import LocalServer
from conductor_platform.settings import async_database_url
from conductor_projector import migrate, sink
from conductor_projector.faults import Fault, classify
from conductor_projector.operations import Undecodable
from conductor_projector.row_cache import RowCache
from tests.unit.scheduling import node, submitted

Log = list[tuple[int, sink.Item]]
NAME = "projector"


async def _state(engine: AsyncEngine) -> dict[str, list[Any]]:
    """Every read model as PostgreSQL prints it (not as Python reads it back)."""
    queries = {
        "jobs": "SELECT ROW(jobs.*)::text FROM jobs ORDER BY job_id",
        "nodes": "SELECT ROW(nodes.*)::text FROM nodes ORDER BY name",
        "workflows": "SELECT ROW(workflows.*)::text FROM workflows ORDER BY workflow_id",
        "users": "SELECT ROW(users.*)::text FROM users ORDER BY user_id",
        "dead_letters": "SELECT ROW(consumer, stream_seq, subject, event_type, job_id, error, data)::text "
        "FROM dead_letters ORDER BY stream_seq",
        "positions": "SELECT ROW(projector_positions.*)::text FROM projector_positions ORDER BY name",
    }
    async with engine.connect() as conn:
        return {name: list((await conn.execute(text(sql))).scalars()) for name, sql in queries.items()}


async def _reference(engine: AsyncEngine, log: Log) -> dict[str, list[Any]]:
    await sink.reset(engine)
    await sink.apply_batch(engine, NAME, log)
    expected = await _state(engine)
    await sink.reset(engine)
    return expected


# Failures injected into the next transaction only.


@contextmanager
def _after_the_next_writes(
    monkeypatch: pytest.MonkeyPatch, failure: Callable[[AsyncConnection], Awaitable[object]]
) -> Iterator[None]:
    """``failure`` strikes once the next batch has written its rows, before its commit."""
    real = sink._execute
    calls = 0

    async def execute(conn: AsyncConnection, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        result = await real(conn, *args, **kwargs)
        calls += 1
        if calls == 1:
            await failure(conn)
        return result

    with monkeypatch.context() as m:
        m.setattr(sink, "_execute", execute)
        yield


def _killed_mid_batch(monkeypatch: pytest.MonkeyPatch) -> contextlib.AbstractContextManager[None]:
    """The next batch's connection is terminated by PostgreSQL after its writes, before its commit."""
    return _after_the_next_writes(
        monkeypatch, lambda conn: conn.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
    )


@contextmanager
def _commit_fails(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, *, landed: bool) -> Iterator[None]:
    """The next COMMIT's outcome is not seen: the connection fails after it landed, or before."""
    dialect = engine.sync_engine.dialect
    real = dialect.do_commit
    calls = 0

    def do_commit(dbapi_connection: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            if landed:
                real(dbapi_connection)
            raise ConnectionResetError("connection reset during COMMIT")
        real(dbapi_connection)

    with monkeypatch.context() as m:
        m.setattr(dialect, "do_commit", do_commit)
        yield


# A life over small batches, each failure placed where kept rows would be wrong if trusted.

WHEN = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
ENV = {"PATH": "/bin", "é": "ü\u2603", "EMPTY": "", "QUOTE": '"\\'}


def _life() -> list[Log]:
    return [
        [(1, node("n1", 8, 1000)), (2, submitted(cpus=2, environment=ENV, occurred_at=WHEN)), (3, submitted())],
        [(4, ev.JobPlaced(job_id=2, node="n1", cores=(0, 1), memory_mb=100, occurred_at=WHEN))],
        [
            (5, ev.JobStarted(job_id=2, node="n1", pid=4242)),
            (6, ev.JobPlaced(job_id=3, node="n1", cores=(2,), memory_mb=1)),
        ],
        [(7, ev.JobCompleted(job_id=2, node="n1")), (8, ev.JobCancelRequested(job_id=3))],
        [(9, ev.JobCancelled(job_id=3, node="n1")), (10, submitted(cpus=3, requeue=True))],
        [(11, ev.JobPlaced(job_id=10, node="n1", cores=(0, 1, 2), memory_mb=1))],
        [(12, ev.JobFailed(job_id=10, node="n1", exit_code=None, node_fail=True))],
        [(13, ev.JobRequeued(job_id=10, node="n1", run=0))],
        [(14, ev.JobPlaced(job_id=10, node="n1", cores=(3, 4, 5), memory_mb=1, run=1))],
        [(15, ev.JobTimedOut(job_id=10, node="n1", run=1))],
    ]


async def _failing(engine: AsyncEngine, batch: Log, kept: RowCache) -> None:
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
        await sink.apply_batch(engine, NAME, batch, kept=kept)


Inject = Callable[[AsyncEngine, pytest.MonkeyPatch], Any]
INJECTIONS: dict[str, Inject] = {
    "killed mid-batch": lambda engine, mp: _killed_mid_batch(mp),
    "commit landed, not seen": lambda engine, mp: _commit_fails(engine, mp, landed=True),
    "commit lost": lambda engine, mp: _commit_fails(engine, mp, landed=False),
}


@pytest.mark.parametrize("failure", sorted(INJECTIONS))
@pytest.mark.parametrize("limit", [0, 1, 10_000])
async def test_a_failed_batch_then_the_same_batch_again_with_the_same_kept_rows(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, failure: str, limit: int
) -> None:
    life = _life()
    expected = await _reference(engine, [item for batch in life for item in batch])
    for at in range(1, len(life)):  # each batch but the first fails once, then is applied again
        await sink.reset(engine)
        kept = RowCache(limit)
        for i, batch in enumerate(life):
            if i == at:
                with INJECTIONS[failure](engine, monkeypatch):
                    await _failing(engine, batch, kept)
            await sink.apply_batch(engine, NAME, batch, kept=kept)
        assert await _state(engine) == expected, f"failed at batch {at}"


async def test_a_failure_after_a_batch_whose_kept_rows_moved_on(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit that landed unseen is followed by a batch that ends the jobs it placed: the kept
    rows say PENDING, the stored ones RUNNING (their CPUs must be given back)."""
    life = _life()
    expected = await _reference(engine, [item for batch in life for item in batch])
    await sink.reset(engine)
    kept = RowCache()
    for i, batch in enumerate(life):
        if i in (1, 5, 8):
            with _commit_fails(engine, monkeypatch, landed=True):
                await _failing(engine, batch, kept)
            continue  # not applied again: the log goes on (the position says it is there)
        await sink.apply_batch(engine, NAME, batch, kept=kept)
    assert await _state(engine) == expected


# The one-by-one path, before and after batches that use kept rows.


def _poison() -> Log:
    """Each batch of two after the first holds an event that makes it fall back to event by event."""
    return [
        (1, node("n1", 8)),
        (2, submitted(cpus=2)),
        (3, submitted()),
        (4, ev.JobPlaced(job_id=2, node="n1", cores=(0, 1), memory_mb=1)),
        (5, ev.JobStarted(job_id=2, node="n1", pid=2**40)),  # unstorable pid: a dead letter, a note
        (6, ev.JobStarted(job_id=2, node="n1", pid=7)),
        (7, submitted(name="a\x00b", memory_mb=2**40)),  # stored with its fields changed
        (8, ev.JobPlaced(job_id=7, node="n1", cores=(2,), memory_mb=1)),
        (9, Undecodable(subjects.SUBMITTED, b"\x00garbage", "not an event")),
        (10, ev.JobReasonChanged(job_id=3, reason="a\x00b")),  # a dead letter, a note on job 3
        (11, ev.JobCancelRequested(job_id=2**62)),  # no such job
        (12, ev.JobCancelRequested(job_id=2**70)),  # no such job, nor any job id it could be
        (13, ev.JobPlaced(job_id=15, node="n1", cores=(3,), memory_mb=1)),  # a job that comes later
        (14, ev.JobCompleted(job_id=2, node="n1")),
        (15, submitted()),
        (16, ev.JobCompleted(job_id=7, node="n1")),
        (17, ev.JobPlaced(job_id=15, node="n1", cores=(3,), memory_mb=1)),
        (18, ev.JobPlaced(job_id=3, node="n1", cores=(4,), memory_mb=1)),
        (19, ev.JobFailed(job_id=15, node="n1", exit_code=2**40)),  # unstorable exit code
        (20, ev.JobFailed(job_id=15, node="n1", exit_code=1)),
        (21, ev.JobCompleted(job_id=3, node="n1")),
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("limit", [0, 1, 2, 10_000])
async def test_batches_event_by_event_among_batches_with_kept_rows(engine: AsyncEngine, size: int, limit: int) -> None:
    log = _poison()
    expected = await _reference(engine, log)
    kept = RowCache(limit)
    for i in range(0, len(log), size):
        await sink.apply_batch(engine, NAME, log[i : i + size], kept=kept)
        await sink.apply_batch(engine, NAME, log[max(0, i - size) : i + size], kept=kept)  # a replay
    assert await _state(engine) == expected


# Rebuilds beside a running projector.


async def test_a_rebuild_that_reaches_the_kept_position_again(engine: AsyncEngine) -> None:
    """The same position after a reset: the kept rows are used again, and are the rows stored (the
    log is the same)."""
    life = _life()
    log = [item for batch in life for item in batch]
    expected = await _reference(engine, log)
    for at in range(1, len(life)):
        await sink.reset(engine)
        kept = RowCache()
        for batch in life[:at]:
            await sink.apply_batch(engine, NAME, batch, kept=kept)
        await sink.reset(engine)  # a rebuild, which replays up to where this projector is
        await sink.apply_batch(engine, NAME, [item for batch in life[:at] for item in batch])
        for batch in life[at:]:
            await sink.apply_batch(engine, NAME, batch, kept=kept)
        assert await _state(engine) == expected, f"rebuilt at batch {at}"


async def test_a_rebuild_behind_then_joined_with_the_same_kept_rows(engine: AsyncEngine) -> None:
    life = _life()
    log = [item for batch in life for item in batch]
    expected = await _reference(engine, log)
    for at in range(2, len(life)):
        for behind in range(0, at):
            await sink.reset(engine)
            kept = RowCache()
            for batch in life[:at]:
                await sink.apply_batch(engine, NAME, batch, kept=kept)
            await sink.reset(engine)
            rebuilt = [item for batch in life[:behind] for item in batch]
            if rebuilt:
                await sink.apply_batch(engine, NAME, rebuilt)
            position = len(rebuilt)
            if at < len(life):
                with pytest.raises(sink.PositionMovedBack) as moved:
                    await sink.apply_batch(engine, NAME, life[at], kept=kept)
                position = moved.value.position
            assert position == len(rebuilt)
            # The service joins in from there, with the rows it kept.
            for i in range(position, len(log), 2):
                await sink.apply_batch(engine, NAME, log[i : i + 2], read_from=position + 1, kept=kept)
            assert await _state(engine) == expected, f"at {at}, rebuilt up to {behind}"


# Workflows, and jobs several batches touch together.


def _workflow_log() -> Log:
    user, workflow = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
    log: Log = [
        (1, node("n1", 4)),
        (2, node("n2", 4)),
        (3, ev.UserCreated(user_id=user, username="alice")),
        (4, ev.WorkflowSubmitted(workflow_id=workflow, user_id=user, owner="alice", job_count=3)),
        (5, submitted(workflow_id=workflow, workflow_index=0)),
        (6, submitted(workflow_id=workflow, workflow_index=1, parent_indices=(0,))),
        (7, submitted(workflow_id=workflow, workflow_index=2, parent_indices=(0, 1), cpus=2)),
        (8, ev.JobPlaced(job_id=5, node="n1", cores=(0,), memory_mb=1)),
        (9, ev.JobCompleted(job_id=5, node="n1")),
        (10, ev.JobReasonChanged(job_id=6, reason="Resources", detail="d")),
        (11, ev.JobPlaced(job_id=6, node="n2", cores=(0,), memory_mb=1)),
        (12, ev.NodeLost(node="n2")),
        (13, ev.JobFailed(job_id=6, node="n2", exit_code=None, node_fail=True)),
        (14, ev.JobFailed(job_id=6, node="n2", exit_code=3)),  # too late: it ended
        (15, ev.JobCancelled(job_id=7, reason="DependencyNeverSatisfied", detail="parent 6 failed")),
        (16, ev.JobCancelRequested(job_id=7)),  # crossed the end
        (17, node("n2", 4)),
    ]
    return log


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
async def test_workflows_over_batches_with_kept_rows(engine: AsyncEngine, size: int) -> None:
    log = _workflow_log()
    expected = await _reference(engine, log)
    kept = RowCache(2)
    for i in range(0, len(log), size):
        await sink.apply_batch(engine, NAME, log[i : i + size], kept=kept)
    assert await _state(engine) == expected


# A property: every kind of event, every kind of interruption.

_KINDS = (
    *("submit", "submit", "requeue submit", "place", "place", "start", "requeue", "complete", "fail"),
    *("node fail", "timeout", "cancelled", "cancel", "reason", "cancel huge", "place future"),
    *("unstorable submit", "unstorable start", "nul reason", "garbage", "node lost", "node back", "workflow"),
)


def _log(steps: list[tuple[str, int]]) -> Log:
    log: Log = [(1, node("n1", 64, 10_000)), (2, node("n2", 64, 10_000))]
    jobs: list[int] = []

    def add(event: sink.Item) -> int:
        seq = len(log) + 1
        log.append((seq, event))
        return seq

    for kind, pick in steps:
        seq = len(log) + 1
        target = jobs[pick % len(jobs)] if jobs else None
        where = "n1" if pick % 2 else "n2"
        run = pick % 3 // 2  # mostly the first run, sometimes the second
        at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seq, microseconds=pick * 7919)
        if kind == "workflow":
            workflow, user = str(uuid.UUID(int=seq)), str(uuid.UUID(int=1))
            add(ev.WorkflowSubmitted(workflow_id=workflow, user_id=user, owner="o", job_count=3))
            for index in range(3):
                parents = tuple(range(index))[-2:]
                jobs.append(add(submitted(workflow_id=workflow, workflow_index=index, parent_indices=parents)))
            continue
        if kind in ("submit", "requeue submit") or target is None:
            environment = {"K": str(pick), "ü": "\u2603" * (pick % 3)} if pick % 2 else {}
            jobs.append(add(submitted(cpus=1 + pick % 3, requeue=kind == "requeue submit", environment=environment)))
            continue
        events: dict[str, sink.Item] = {
            "unstorable submit": submitted().model_copy(update={"name": "a\x00b", "memory_mb": 2**40}),
            "place": ev.JobPlaced(job_id=target, node=where, cores=(0,), memory_mb=10, run=run, occurred_at=at),
            "start": ev.JobStarted(job_id=target, node=where, pid=100 + seq, run=run, occurred_at=at),
            "requeue": ev.JobRequeued(job_id=target, node=where, run=run, reason="lost" if pick % 2 else ""),
            "complete": ev.JobCompleted(job_id=target, node=where, run=run, occurred_at=at),
            "fail": ev.JobFailed(job_id=target, node=where, exit_code=pick % 5 + 1, message="m" * (pick % 2)),
            "node fail": ev.JobFailed(job_id=target, node=where, exit_code=None, node_fail=True, run=run),
            "timeout": ev.JobTimedOut(job_id=target, node=where, run=run),
            "cancelled": ev.JobCancelled(job_id=target, reason="DependencyNeverSatisfied" if pick % 2 else ""),
            "cancel": ev.JobCancelRequested(job_id=target),
            "reason": ev.JobReasonChanged(job_id=target, reason="Resources", detail=str(pick)),
            "cancel huge": ev.JobCancelRequested(job_id=2**62 if pick % 2 else 2**70),
            "place future": ev.JobPlaced(job_id=seq + 1 + pick % 3, node=where, cores=(1,), memory_mb=1),
            "unstorable start": ev.JobStarted(job_id=target, node=where, pid=2**40),
            "nul reason": ev.JobReasonChanged(job_id=target, reason="x\x00y"),
            "garbage": Undecodable(subjects.SUBMITTED if pick % 2 else "conductor.x", b"\x00", "not an event"),
            "node lost": ev.NodeLost(node=where),
            "node back": node(where, 64, 10_000),
        }
        event = events[kind]
        if kind == "unstorable submit":
            jobs.append(seq)
        add(event)
    return log


_ACTIONS = ("apply", "apply", "apply", "other", "replay", "killed", "landed", "lost", "rebuild", "behind")


async def _run_schedule(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, log: Log, cuts: list[int], actions: list[str], limit: int
) -> None:
    kept = RowCache(limit)
    i, n = 0, 0
    read_from: int | None = None
    while True:
        if i >= len(log):  # a rebuild behind at the end is found out by a batch that comes later
            async with engine.connect() as conn:
                i = await sink.position(conn, NAME)
            if i >= len(log):
                break
            read_from = i + 1
        size = cuts[n % len(cuts)]
        # Interruptions for a while, then only batches, so that it ends (a rebuild behind sets it back).
        action = actions[n % len(actions)] if n < 3 * len(log) else "apply"
        n += 1
        batch = log[i : i + size]

        async def apply(batch: Log = batch, read_from: int | None = read_from, kept: RowCache | None = kept) -> int:
            return await sink.apply_batch(engine, NAME, batch, read_from=read_from, kept=kept)

        try:
            if action == "other":
                await apply(kept=None)
            elif action == "replay":
                await apply(log[max(0, i - 2 * size) : i + size])
            elif action in ("killed", "landed", "lost"):
                failures: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
                    "killed": lambda: _killed_mid_batch(monkeypatch),
                    "landed": lambda: _commit_fails(engine, monkeypatch, landed=True),
                    "lost": lambda: _commit_fails(engine, monkeypatch, landed=False),
                }
                injected = failures[action]()
                with injected, contextlib.suppress(Exception):  # a PositionMovedBack comes again below
                    await apply()
                await apply()  # the same batch again, with the same kept rows
            elif action == "rebuild":  # someone else resets and replays up to where this one is
                await apply()
                await sink.reset(engine)
                await sink.apply_batch(engine, NAME, log[: i + size])
            elif action == "behind":  # a reset that this projector finds out about on its next batch
                await apply()
                await sink.reset(engine)
                await sink.apply_batch(engine, NAME, log[: (i + size) // 2])
            else:
                await apply()
            read_from = None
            i += size
        except sink.PositionMovedBack as moved:
            i, read_from = moved.position, moved.position + 1


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(st.tuples(st.sampled_from(_KINDS), st.integers(0, 30)), min_size=3, max_size=30),
    cuts=st.lists(st.integers(1, 8), min_size=1, max_size=8),
    actions=st.lists(st.sampled_from(_ACTIONS), min_size=1, max_size=10),
    limit=st.sampled_from([0, 1, 3, 10_000]),
)
@example(
    steps=[("submit", 0), ("place", 1), ("start", 1), ("complete", 1), ("submit", 0)],
    cuts=[1],
    actions=["apply", "landed", "apply", "apply"],
    limit=10_000,
)
async def test_any_schedule_of_failures_replays_and_rebuilds_gives_the_whole_log(
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[tuple[str, int]],
    cuts: list[int],
    actions: list[str],
    limit: int,
) -> None:
    log = _log(steps)
    expected = await _reference(engine, log)
    await _run_schedule(engine, monkeypatch, log, cuts, actions, limit)
    assert await _state(engine) == expected


# PostgreSQL itself stopped in the middle of a batch, and started again.


def _server_stopped_mid_batch(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> contextlib.AbstractContextManager[None]:
    async def stop(conn: AsyncConnection) -> None:
        server.stop()  # a fast shutdown: the transaction is rolled back

    return _after_the_next_writes(monkeypatch, stop)


async def test_postgresql_restarted_in_the_middle_of_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "postgres"
    server = localservers.start_postgres(folder)
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    try:
        await asyncio.to_thread(migrate.upgrade, server.url)
        engine = create_async_engine(async_database_url(server.url), pool_pre_ping=False)
        try:
            life = _life()
            expected = await _reference(engine, [item for batch in life for item in batch])
            for at in (1, 3, 6):
                await sink.reset(engine)
                kept = RowCache()
                for i, batch in enumerate(life):
                    if i == at:
                        with _server_stopped_mid_batch(server, monkeypatch):
                            await _failing(engine, batch, kept)
                        server = localservers.start_postgres(folder, port=port)
                        for _ in range(3):  # a connection the pool still holds may have died with it
                            try:
                                await sink.apply_batch(engine, NAME, batch, kept=kept)
                                break
                            except Exception as err:
                                assert classify(err) is Fault.TRANSIENT
                        continue
                    await sink.apply_batch(engine, NAME, batch, kept=kept)
                assert await _state(engine) == expected, f"restarted at batch {at}"
        finally:
            await engine.dispose()
    finally:
        server.stop()


@pytest.mark.parametrize("cuts", [(1, 2), (3, 1), (2, 5)])
async def test_two_projectors_of_one_name_at_once_each_keeping_rows(engine: AsyncEngine, cuts: tuple[int, int]) -> None:
    """Both follow the log at the same time (a second replica, or a rebuild's projector beside the
    live one): the positions row's lock takes turns, and each one's kept rows are used only after
    its own commit."""
    log = _log([(kind, pick) for pick, kind in enumerate(_KINDS * 2)])
    expected = await _reference(engine, log)

    async def follow(size: int) -> None:
        kept = RowCache()
        for i in range(0, len(log), size):
            await sink.apply_batch(engine, NAME, log[i : i + size], kept=kept)
            await asyncio.sleep(0)

    await asyncio.gather(follow(cuts[0]), follow(cuts[1]))
    assert await _state(engine) == expected


async def test_a_second_projector_name_on_the_same_tables_is_read_as_before(engine: AsyncEngine) -> None:
    """Found by this review: the one behind took the other's job for one without a row, and wrote it
    PENDING again over its placement; the other then never gave the CPUs back."""
    log: Log = [
        (1, node("n1", 4)),
        (2, submitted(cpus=2)),
        (3, ev.JobPlaced(job_id=2, node="n1", cores=(0, 1), memory_mb=100)),
        (4, ev.JobCompleted(job_id=2, node="n1")),
    ]
    await sink.reset(engine)
    await sink.apply_batch(engine, "a", log)
    expected = await _state(engine)
    await sink.reset(engine)
    kept = RowCache()
    await sink.apply_batch(engine, "a", log[:3], kept=kept)  # a: job 2 RUNNING, n1 cpus_alloc 2
    await sink.apply_batch(engine, "b", log[:2], kept=RowCache())  # b, behind: must not make it PENDING
    await sink.apply_batch(engine, "a", log[3:], kept=kept)
    await sink.apply_batch(engine, "b", log[2:], kept=RowCache())
    got = await _state(engine)
    got.pop("positions")
    expected.pop("positions")
    assert got == expected


async def test_a_rebuild_of_a_changed_log_that_reaches_the_kept_position(engine: AsyncEngine) -> None:
    """Found by this review: a message deleted from the stream, then a rebuild beside the live
    projector up to the very position its kept rows were at; they were trusted."""
    log: Log = [
        (1, node("n1", 4)),
        (2, submitted(cpus=2)),
        (3, ev.JobPlaced(job_id=2, node="n1", cores=(0, 1), memory_mb=100)),
        (4, submitted()),
        (5, ev.JobReasonChanged(job_id=4, reason="Resources")),
        (6, ev.JobCompleted(job_id=2, node="n1")),
    ]
    changed = [item for item in log if item[0] != 3]
    await sink.reset(engine)
    await sink.apply_batch(engine, NAME, changed)
    expected = await _state(engine)
    await sink.reset(engine)
    kept = RowCache()
    await sink.apply_batch(engine, NAME, log[:3], kept=kept)
    await sink.apply_batch(engine, NAME, log[3:5], kept=kept)
    await sink.reset(engine)
    await sink.apply_batch(engine, NAME, changed[:4])  # the rebuild, to 5 again
    await sink.apply_batch(engine, NAME, log[5:], kept=kept)
    assert await _state(engine) == expected
