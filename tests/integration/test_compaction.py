"""`conductor compact` on a real JetStream and PostgreSQL: what no reader needs leaves the stream for
the archive, whole and in order; what a reader still needs (a live job's submission, users, the
fencing token, what the snapshot or the read models have not covered) stays; and the system goes on."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor import compact
from conductor_contracts import events as ev
from conductor_platform.archive import compacted_below, read_archive, segments
from conductor_platform.bus import Bus, next_batch, read_from
from conductor_platform.localservers import free_port
from conductor_projector import tables as t
from conductor_projector.service import run as project
from conductor_projector.settings import ProjectorSettings
from conductor_scheduler import snapshot
from conductor_scheduler.service import run as schedule
from conductor_scheduler.settings import SchedulerSettings
from tests.integration.helpers import eventually
from tests.integration.served import take
from tests.unit.scheduling import node, submitted


async def _placed(bus: Bus) -> list[int]:
    """Placements in what the stream holds (``read_log`` reads every sequence; a compacted log has gaps)."""
    reader = await read_from(bus, 1)
    placed: list[int] = []
    try:
        while msgs := await next_batch(reader, 1000, wait_s=0.2):
            placed += [e.job_id for m in msgs if isinstance(e := ev.decode(m.data), ev.JobPlaced)]
    finally:
        await reader.unsubscribe()
    return placed


async def _until(bus: Bus, nats_url: str, database_url: str, jobs: list[int]) -> None:
    """Run a scheduler and a projector until ``jobs`` are placed and both have folded the whole log."""
    stop = asyncio.Event()
    scheduler_settings = SchedulerSettings(nats_url=nats_url, snapshot_every_events=1, snapshot_min_interval_s=0)
    projector_settings = ProjectorSettings(
        nats_url=nats_url, database_url=database_url, public_subjects=False, linger_s=0
    )
    tasks = [
        asyncio.create_task(schedule(scheduler_settings, stop)),
        asyncio.create_task(project(projector_settings, stop=stop)),
    ]

    async def placed() -> bool:
        return set(jobs) <= set(await _placed(bus))

    await eventually(placed, what="the jobs placed")
    await asyncio.sleep(1.0)  # the placements folded back, a snapshot stored, the projector caught up
    stop.set()
    await asyncio.gather(*tasks)


async def _rebuild(nats_url: str, database_url: str, archive_dir: Path) -> None:
    """``conductor projector --rebuild`` with the archive in ``archive_dir``, for two seconds."""
    settings = ProjectorSettings(
        nats_url=nats_url, database_url=database_url, public_subjects=False, archive_dir=str(archive_dir)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(project(settings, rebuild=True, stop=stop))
    await asyncio.sleep(2.0)
    stop.set()
    await task


async def _position(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(t.positions.c.position)) or 0)


async def test_compaction_archives_what_no_reader_needs(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    user = ev.UserCreated(user_id=str(uuid.uuid4()), username="alice")
    await bus.publish(user)
    await bus.publish(node("n1", 4, 4000))
    jobs = [await bus.publish(submitted()) for _ in range(4)]
    await _until(bus, nats_url, database_url, jobs)
    # Three jobs end; the third of the four stays running (its submission must stay in the log).
    for job in (jobs[0], jobs[1], jobs[3]):
        await bus.publish(ev.JobStarted(job_id=job, node="n1", pid=1))
        await bus.publish(ev.JobCompleted(job_id=job, node="n1"))
    late = await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [late])
    last = (await bus.js.stream_info(bus.stream)).state.last_seq
    assert await _position(engine) == last

    done = await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)

    assert done.watermark.limited_by() == "the oldest job not ended when the scheduler saved its snapshot"
    assert done.below == jobs[2]
    archived = list(read_archive(archive))
    assert [seq for seq, *_ in archived] == list(range(1, jobs[2]))
    assert ev.decode(archived[0][2]) == user
    assert await compacted_below(bus) == jobs[2]
    # Gone from the stream, save the user; the live job's submission is still there.
    with pytest.raises(NotFoundError):
        await bus.js.get_msg(bus.stream, seq=jobs[0])
    assert str((await bus.js.get_msg(bus.stream, seq=1)).subject).startswith("conductor.gw.user.")
    assert (await bus.js.get_msg(bus.stream, seq=jobs[2])).subject == "conductor.gw.submitted"

    # Nothing more can go while that job runs: a second run archives nothing.
    again = await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)
    assert again.segment is None and len(segments(archive)) == 1

    # The system goes on: a restarted scheduler (from its snapshot, the fencing token kept) places a
    # new job once, and the projector follows.
    newer = await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [newer])
    placed = await _placed(bus)
    assert placed.count(newer) == 1 and placed.count(late) == 1


async def test_without_a_snapshot_nothing_is_compacted(
    bus: Bus, engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    await bus.publish(node("n1", 4, 4000))
    await bus.publish(submitted())
    done = await compact.compact(bus, database_url, tmp_path / "a", keep_s=0, public_subjects=False)
    assert done.segment is None and done.watermark.limited_by() == "the scheduler's snapshot"
    assert (await bus.js.stream_info(bus.stream)).state.messages == 2


async def test_recent_events_are_kept(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    await bus.publish(node("n1", 4, 4000))
    job = await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [job])
    await bus.publish(ev.JobCompleted(job_id=job, node="n1"))
    await _until(bus, nats_url, database_url, [job])
    done = await compact.compact(bus, database_url, tmp_path / "a", keep_s=3600, public_subjects=False)
    assert done.segment is None and done.watermark.limited_by() == "--keep"


async def test_a_scheduler_without_a_snapshot_folds_the_archive(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    await bus.publish(node("n1", 2, 4000))
    done_job, running_job = await bus.publish(submitted()), await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [done_job, running_job])
    await bus.publish(ev.JobCompleted(job_id=done_job, node="n1"))
    await _until(bus, nats_url, database_url, [])
    compacted = await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)
    assert compacted.below == running_job
    # The snapshot is lost, and a second node registers: a scheduler that folded only what the stream
    # holds would not know n1 nor the job running there, and would place on n2 as if nothing ran.
    await (await bus.js.object_store(snapshot.BUCKET)).delete(snapshot.NAME)
    await bus.publish(node("n2", 1, 4000))
    new_job = await bus.publish(submitted(cpus=2))

    stop = asyncio.Event()
    blind = SchedulerSettings(nats_url=nats_url, archive_dir=str(tmp_path / "elsewhere"))
    task = asyncio.create_task(schedule(blind, stop))
    await asyncio.sleep(2.0)
    assert new_job not in await _placed(bus), "placed from a log missing its compacted part"
    stop.set()
    await task

    # With the archive: n1 has one core taken by the running job, so the two-core job waits; once
    # that job ends it goes to n1, once.
    settings = SchedulerSettings(nats_url=nats_url, archive_dir=str(archive))
    stop = asyncio.Event()
    task = asyncio.create_task(schedule(settings, stop))
    await asyncio.sleep(1.5)
    assert new_job not in await _placed(bus)
    await bus.publish(ev.JobCompleted(job_id=running_job, node="n1"))

    async def placed() -> bool:
        return new_job in await _placed(bus)

    await eventually(placed, what="the new job placed")
    stop.set()
    scheduler = await task
    assert scheduler is not None and scheduler.state.running[new_job].node == "n1"
    assert (await _placed(bus)).count(running_job) == 1, "the running job placed again"


async def _jobs(engine: AsyncEngine) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(t.jobs).order_by(t.jobs.c.job_id))
        return [tuple(row) for row in rows]


async def test_a_rebuild_reads_the_archive_then_the_stream(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = tmp_path / "archive"
    await bus.publish(ev.UserCreated(user_id=str(uuid.uuid4()), username="bob"))
    await bus.publish(node("n1", 4, 4000))
    jobs = [await bus.publish(submitted()) for _ in range(3)]
    await _until(bus, nats_url, database_url, jobs)
    for job in jobs[:2]:
        await bus.publish(ev.JobCompleted(job_id=job, node="n1"))
    await _until(bus, nats_url, database_url, [])
    before = await _jobs(engine)
    assert (await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)).below == jobs[2]

    # Without the archive the read models are not rebuilt from the stream's part alone.
    with caplog.at_level(logging.INFO, logger="conductor.projector"):
        await _rebuild(nats_url, database_url, tmp_path / "elsewhere")
    assert [row[0] for row in await _jobs(engine)] == []
    # Said plainly, how to mend it included, without a traceback every retry.
    waits = [r for r in caplog.records if "waits for the archive" in r.getMessage()]
    assert waits and all(r.levelno == logging.ERROR and r.exc_info is None for r in waits)
    assert "CONDUCTOR_ARCHIVE_DIR" in str(getattr(waits[0], "error", ""))
    await _rebuild(nats_url, database_url, archive)
    assert await _jobs(engine) == before
    async with engine.connect() as conn:
        assert await conn.scalar(select(t.users.c.username)) == "bob"


async def test_a_compaction_that_failed_before_its_record_leaves_no_overlapping_segment(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run that dies between the archive's write and the record of it (kill -9, NATS away), then a
    # run with more of the log behind the watermark: the archive must still hold each event once, in
    # order. Read twice, a job's submission after its end makes it pending again for a scheduler that
    # folds the archive, which runs it a second time.
    archive = tmp_path / "archive"
    await bus.publish(node("n1", 4, 4000))
    ended = await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [ended])
    await bus.publish(ev.JobCompleted(job_id=ended, node="n1"))
    second = await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [second])

    async def dies(_: Bus) -> None:
        raise ConnectionError("killed between the archive and its record")

    with monkeypatch.context() as patched:
        patched.setattr(compact, "compaction_bucket", dies)
        with pytest.raises(ConnectionError):
            await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)
    assert await compacted_below(bus) == 1 and len(segments(archive)) == 1

    await bus.publish(ev.JobCompleted(job_id=second, node="n1"))
    live = await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [live])
    before = await _jobs(engine)
    done = await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)
    assert done.below == live
    seqs = [seq for seq, *_ in read_archive(archive)]
    assert seqs == sorted(set(seqs)), "an event archived twice, or out of order"

    # A scheduler without its snapshot folds the archive: the ended job stays ended.
    await (await bus.js.object_store(snapshot.BUCKET)).delete(snapshot.NAME)
    stop = asyncio.Event()
    task = asyncio.create_task(schedule(SchedulerSettings(nats_url=nats_url, archive_dir=str(archive)), stop))
    await asyncio.sleep(2.0)
    stop.set()
    scheduler = await task
    assert scheduler is not None and ended not in scheduler.state.pending and ended not in scheduler.state.running
    assert ended not in await _placed(bus), "an ended job placed again"

    await _rebuild(nats_url, database_url, archive)
    assert await _jobs(engine) == before


async def test_two_compactions_then_a_rebuild_and_the_gateway_on_compacted_jobs(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    from conductor_gateway.settings import GatewaySettings
    from tests.integration.test_gateway import body, gateway

    archive = tmp_path / "archive"
    await bus.publish(node("n1", 4, 4000))
    gateway_settings = GatewaySettings(nats_url=nats_url, database_url=database_url)
    async with gateway(gateway_settings) as client:
        assert (await client.post("/users/", json={"username": "carol"})).status_code == 200
    ok, failed = await bus.publish(submitted()), await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [ok, failed])
    await bus.publish(ev.JobCompleted(job_id=ok, node="n1"))
    await bus.publish(ev.JobFailed(job_id=failed, node="n1", exit_code=1, message="no"))
    first_live = await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [first_live])
    one = await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)
    assert one.below == first_live

    await bus.publish(ev.JobCompleted(job_id=first_live, node="n1"))
    second_live = await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [second_live])
    two = await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)
    assert two.first == first_live and two.below == second_live
    assert [(a, b) for a, b, _ in segments(archive)] == [(1, first_live - 1), (first_live, second_live - 1)]
    assert [seq for seq, *_ in read_archive(archive)] == list(range(1, second_live))

    async with gateway(gateway_settings) as client:
        assert (await client.post("/users/", json={"username": "carol"})).status_code == 409
        shown = await client.get(f"/jobs/query/{ok}")
        assert shown.status_code == 200 and shown.json()["state"] == "COMPLETED"
        after_ok = await client.post("/jobs/submit", json=body(dependency=f"afterok:{ok}"))
        after_failed = await client.post("/jobs/submit", json=body(dependency=f"afterok:{failed}"))
        assert after_ok.status_code == after_failed.status_code == 200, (after_ok.text, after_failed.text)
    runs, never = int(after_ok.json()["job_id"]), int(after_failed.json()["job_id"])
    await _until(bus, nats_url, database_url, [runs])
    before = await _jobs(engine)
    states = {row[0]: row for row in before}
    assert never in states and runs in states
    assert never not in await _placed(bus), "a job held by a failed, compacted job was placed"

    await _rebuild(nats_url, database_url, archive)
    assert await _jobs(engine) == before


async def test_a_projector_that_joins_a_rebuild_on_a_compacted_log_keeps_the_archived_jobs(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    # A projector following the log sees its position move back when another one rebuilds, and reads
    # again from there: on a compacted log that "there" may lie in the archive, which it must not skip.
    archive = tmp_path / "archive"
    await bus.publish(node("n1", 64, 64000))
    jobs = [await bus.publish(submitted()) for _ in range(30)]
    await _until(bus, nats_url, database_url, jobs)
    for job in jobs[:-1]:
        await bus.publish(ev.JobCompleted(job_id=job, node="n1"))
    await _until(bus, nats_url, database_url, [])
    before = await _jobs(engine)
    assert (await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)).below == jobs[-1]

    def settings(batch_size: int) -> ProjectorSettings:
        return ProjectorSettings(
            nats_url=nats_url,
            database_url=database_url,
            public_subjects=False,
            archive_dir=str(archive),
            linger_s=0,
            batch_size=batch_size,
        )

    stop = asyncio.Event()
    follower = asyncio.create_task(project(settings(2000), stop=stop))
    await asyncio.sleep(1.0)
    rebuilder = asyncio.create_task(project(settings(1), rebuild=True, stop=stop))
    for _ in range(40):  # events keep coming while the archive is applied again
        await bus.publish(node("n1", 64, 64000))
        await asyncio.sleep(0.02)
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.gather(follower, rebuilder)
    assert [row[0] for row in await _jobs(engine)] == [row[0] for row in before]


async def test_public_subjects_that_aged_out_do_not_hold_the_log_back(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    # The public stream keeps public_retention_s: once a quiet cluster's public events aged out, the
    # republisher is still caught up, and compaction should not read "nothing published".
    await bus.publish(node("n1", 4, 4000))
    job = await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [job])
    await bus.publish(ev.JobCompleted(job_id=job, node="n1"))
    stop = asyncio.Event()
    settings = ProjectorSettings(
        nats_url=nats_url, database_url=database_url, public_subjects=True, public_retention_s=1.0, linger_s=0
    )
    await _until(bus, nats_url, database_url, [])
    task = asyncio.create_task(project(settings, stop=stop))
    await asyncio.sleep(1.5)  # all republished
    stop.set()
    await asyncio.wait_for(task, 10)
    await asyncio.sleep(2.0)  # every public event aged out
    done = await compact.compact(bus, database_url, tmp_path / "a", keep_s=0, public_subjects=True)
    assert done.watermark.limited_by() != "the public subjects' position", done.watermark


async def _one_ended_one_running(bus: Bus, nats_url: str, database_url: str) -> int:
    """A node, a job that ended and one still running (which holds compaction at its submission),
    placed and folded by a scheduler and a projector; returns the running one's id."""
    await bus.publish(node("n1", 4, 4000))
    done = await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [done])
    await bus.publish(ev.JobCompleted(job_id=done, node="n1"))
    live = await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [live])
    return live


async def test_the_event_feed_says_when_a_position_was_compacted(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    from tests.integration.test_feed import feed, gateway

    # A user is kept below the mark (and archived too): sent after the notice, a client reading the
    # archive as the notice says got it twice.
    await bus.publish(ev.UserCreated(user_id=str(uuid.uuid4()), username="kept"))
    live = await _one_ended_one_running(bus, nats_url, database_url)
    below = (await compact.compact(bus, database_url, tmp_path / "archive", keep_s=0, public_subjects=False)).below
    assert below == live

    async with gateway(nats_url, database_url) as client:
        async with feed(client, "?since=0") as stream:
            told, first = await take(stream, 2)
        assert told.event == "compacted" and told.id is None
        assert told.data is not None and told.data["last_event_id"] == 0 and told.data["compacted_below"] == below
        # The stream goes on with what it holds; the notice has no id, so Last-Event-ID stays the client's.
        assert (first.id, first.event) == (live, "JobSubmitted")
        # A position past the compacted part is sent its events and nothing else.
        async with feed(client, "", **{"Last-Event-ID": str(below - 1)}) as stream:
            (resumed,) = await take(stream, 1)
        assert resumed.id == live and resumed.event == "JobSubmitted"


async def test_a_feed_keeps_the_account_of_jobs_whose_submission_was_compacted(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    from tests.integration.test_feed import feed, gateway

    # Its later events stay in the log (a job still running holds the mark at its own submission), but
    # the context of their job was read from the log alone: filtered on its account, they were dropped.
    await bus.publish(node("n1", 4, 4000))
    dave = await bus.publish(submitted(account="dave"))
    running = await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [dave, running])
    await bus.publish(ev.JobCompleted(job_id=dave, node="n1"))
    await _until(bus, nats_url, database_url, [])
    below = (await compact.compact(bus, database_url, tmp_path / "archive", keep_s=0, public_subjects=False)).below
    assert below == running

    async with gateway(nats_url, database_url) as client, feed(client, "?since=0&account=dave") as stream:
        told, *events = await take(stream, 3)  # the notice, dave's placement and completion
    assert told.event == "compacted"
    assert [(m.event, m.data and m.data["account"]) for m in events] == [
        ("JobPlaced", "dave"),
        ("JobCompleted", "dave"),
    ]


async def test_a_feed_open_while_compaction_purges_ahead_of_it_is_told(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    from conductor_gateway.client_feed import ClientFeed, FeedLimits
    from conductor_gateway.feed_items import FeedFilter
    from conductor_platform.jobs import JobDirectory

    # The feed's consumer was made before the purge: JetStream skips what is gone, silently, and the
    # client's Last-Event-ID moved past the hole unaware.
    await _one_ended_one_running(bus, nats_url, database_url)
    limits = FeedLimits(heartbeat_s=5, buffer=8, stall_s=30)
    opened = await ClientFeed.open(bus, 1, FeedFilter(), JobDirectory(), limits)
    try:
        await compact.compact(bus, database_url, tmp_path / "archive", keep_s=0, public_subjects=False)
        first = await anext(opened.stream())
    finally:
        await opened.close()
    fields = dict(line.split(": ", 1) for line in first.decode().strip().split("\n"))
    assert fields["event"] == "compacted" and "id" not in fields
    assert json.loads(fields["data"])["last_event_id"] == 0


async def test_a_rebuild_that_starts_during_a_compaction_holds_its_purge_back(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebuild resets the read models while the archive is written: it may have read the previous
    # compaction record, and would read from the stream what this run purges. Nothing is purged then;
    # the next run, once the rebuild is past the archived part, purges it.
    from conductor_projector import sink

    archive = tmp_path / "archive"
    await bus.publish(node("n1", 4, 4000))
    jobs = [await bus.publish(submitted()) for _ in range(3)]
    await _until(bus, nats_url, database_url, jobs)
    for job in jobs[:2]:
        await bus.publish(ev.JobCompleted(job_id=job, node="n1"))
    await _until(bus, nats_url, database_url, [])
    before = await _jobs(engine)
    held = (await bus.js.stream_info(bus.stream)).state.messages
    write = compact.write_archive

    async def written_while_a_rebuild_starts(*args: object) -> tuple[Path, int]:
        done = await write(*args)  # type: ignore[arg-type]
        await sink.reset(engine)
        return done

    monkeypatch.setattr(compact, "write_archive", written_while_a_rebuild_starts)
    done = await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)
    assert done.below == jobs[2] and done.segment is not None and not done.purged
    assert (await bus.js.stream_info(bus.stream)).state.messages == held
    assert await compacted_below(bus) == jobs[2]

    monkeypatch.setattr(compact, "write_archive", write)
    await _rebuild(nats_url, database_url, archive)
    assert await _jobs(engine) == before
    again = await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)
    assert again.segment is None and again.purged
    assert (await bus.js.stream_info(bus.stream)).state.first_seq == jobs[2]
    assert [seq for seq, *_ in read_archive(archive)] == list(range(1, jobs[2]))


@pytest.mark.parametrize("away", ["DATABASE_URL", "NATS_URL"])
def test_compact_without_a_server_it_reads_says_so_in_one_line(nats_url: str, away: str, tmp_path: Path) -> None:
    # Without PostgreSQL it ended in a 40-line asyncpg traceback.
    closed_port = free_port()
    env = os.environ | {
        "NATS_URL": nats_url,
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed_port}/conductor",
    }
    if away == "NATS_URL":
        env["NATS_URL"] = f"nats://127.0.0.1:{closed_port}"
    argv = [sys.executable, "-m", "conductor", "compact", "--archive", str(tmp_path / "archive")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "conductor compact: cannot " in done.stderr and away in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
