"""`conductor compact` where it could lose the log (review of 2026-12-02): a stream that stalls while
a range is archived, two runs at once, another run's record made meanwhile, a stream deleted and made
again; and a scheduler snapshot ahead of the log. Each must end with every event in the stream or in
the archive, never in neither, and no reader skipping a part of the log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.msg import Msg
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor import compact
from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform import which_log
from conductor_platform.archive import COMPACTION_KEY, compacted_below, compaction_bucket, read_archive, segments
from conductor_platform.bus import Bus, ensure_stream, next_batch
from conductor_scheduler import snapshot
from tests.integration.test_compaction import _until
from tests.unit.scheduling import node, submitted


async def _compactable(bus: Bus, nats_url: str, database_url: str, jobs: int = 6) -> int:
    """A log whose every job ended, folded by a scheduler (its snapshot stored) and a projector: all
    of it but the newest scheduler decision can be compacted. Returns its last sequence."""
    await bus.publish(node("n1", 8, 8000))
    ids = [await bus.publish(submitted()) for _ in range(jobs)]
    await _until(bus, nats_url, database_url, ids)
    for job in ids:
        await bus.publish(ev.JobCompleted(job_id=job, node="n1"))
    tail = await bus.publish(submitted())  # folded with the rest; it runs, and holds the log from here
    await _until(bus, nats_url, database_url, [tail])
    return tail


def _archived(archive: Path) -> list[int]:
    return [seq for seq, *_ in read_archive(archive)]


def _fetches(script: list[str]) -> Any:
    """``next_batch`` as compaction calls it, two messages at a time, answering nothing where the
    script says ``stall`` (a server that does not answer within the fetch's wait); the script's end
    repeats."""
    calls = iter(script)
    last = script[-1]

    async def fetch(reader: Any, _: int, wait_s: float = 1.0, **kw: Any) -> list[Msg]:
        if next(calls, last) == "stall":
            return []
        return await next_batch(reader, 2, wait_s=wait_s, **kw)

    return fetch


async def test_a_log_that_stalls_while_it_is_archived_is_archived_whole(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch that brought nothing was the end of the range: the segment held what came before it,
    was named for the whole range, and the rest was purged."""
    below = await _compactable(bus, nats_url, database_url)
    monkeypatch.setattr(compact, "next_batch", _fetches(["read", "stall", "read", "stall", "stall", "read"]))
    done = await compact.compact(bus, database_url, tmp_path / "archive", keep_s=0, public_subjects=False)
    assert done.below == below
    assert _archived(tmp_path / "archive") == list(range(1, below)) and done.archived == below - 1


async def test_a_log_that_does_not_deliver_its_range_is_neither_recorded_nor_purged(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _compactable(bus, nats_url, database_url)
    held = (await bus.js.stream_info(bus.stream)).state.messages
    monkeypatch.setattr(compact, "next_batch", _fetches(["read", "stall"]))
    monkeypatch.setattr(compact, "_FETCH_S", 0.05)
    with pytest.raises(compact.Refused, match="did not deliver sequence 3"):
        await compact.compact(bus, database_url, tmp_path / "archive", keep_s=0, public_subjects=False)
    assert await compacted_below(bus) == 1 and segments(tmp_path / "archive") == []
    assert (await bus.js.stream_info(bus.stream)).state.messages == held
    assert not list((tmp_path / "archive").glob("*.partial"))


async def test_a_second_run_on_the_same_archive_is_refused_while_the_first_runs(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs at once: the one that read the stream after the other had purged it renamed an empty
    segment over the other's, and recorded it (76 events in neither)."""
    below = await _compactable(bus, nats_url, database_url)
    archive = tmp_path / "archive"
    writing, go_on = asyncio.Event(), asyncio.Event()
    write = compact.write_archive

    async def slow_write(*args: Any) -> tuple[Path, int]:
        writing.set()
        await go_on.wait()
        return await write(*args)

    monkeypatch.setattr(compact, "write_archive", slow_write)
    first = asyncio.create_task(compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False))
    await asyncio.wait_for(writing.wait(), 30)
    with pytest.raises(compact.Refused, match="another `conductor compact` runs on the archive"):
        await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)
    go_on.set()
    done = await first
    assert done.below == below and _archived(archive) == list(range(1, below))
    again = await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)  # the lock went
    assert again.segment is None


async def test_a_record_another_run_made_meanwhile_wins_and_this_run_purges_nothing(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run on another archive (another machine) recorded a compaction while this one wrote its
    segment: this one must neither record over it nor purge."""
    await _compactable(bus, nats_url, database_url)
    write = compact.write_archive

    async def overtaken(on: Bus, target: Path, first: int, below: int) -> tuple[Path, int]:
        written = await write(on, target, first, below)
        elsewhere = tmp_path / "elsewhere"
        await write(on, elsewhere, first, below)
        identity = await which_log.log_identity(bus)
        value = f'{{"below": {below}, "archive": "{elsewhere}", "log": "{identity}"}}'.encode()
        await (await compaction_bucket(bus)).put(COMPACTION_KEY, value)
        return written

    held = (await bus.js.stream_info(bus.stream)).state.messages
    monkeypatch.setattr(compact, "write_archive", overtaken)
    with pytest.raises(compact.Refused, match="recorded a compaction while this one ran"):
        await compact.compact(bus, database_url, tmp_path / "archive", keep_s=0, public_subjects=False)
    assert (await bus.js.stream_info(bus.stream)).state.messages == held
    # Its segment was never recorded: left, it would split the log's archive across two folders, and
    # hold nothing if the other run had purged the range first (review of 2026-12-02).
    assert segments(tmp_path / "archive") == [] and len(segments(tmp_path / "elsewhere")) == 1


async def test_a_folder_without_the_last_recorded_segment_is_not_the_logs_archive(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    tail = await _compactable(bus, nats_url, database_url)
    await compact.compact(bus, database_url, tmp_path / "archive", keep_s=0, public_subjects=False)
    await bus.publish(ev.JobCompleted(job_id=tail, node="n1"))  # what holds the log back ends
    later = await bus.publish(submitted())
    await _until(bus, nats_url, database_url, [later])
    with pytest.raises(compact.Refused, match="does not hold the segment ending at"):
        await compact.compact(bus, database_url, tmp_path / "another", keep_s=0, public_subjects=False)
    assert segments(tmp_path / "another") == []


async def test_a_nats_that_stops_answering_mid_run_is_one_line(
    bus: Bus, engine: AsyncEngine, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stalls(*_: Any, **__: Any) -> None:
        raise nats.errors.TimeoutError

    monkeypatch.setattr(compact, "watermark", stalls)
    with pytest.raises(compact.Unreachable, match="NATS did not answer"):
        await compact.compact(bus, database_url, tmp_path / "archive", keep_s=0, public_subjects=False)


async def test_the_record_of_a_stream_deleted_and_made_again_is_not_this_logs(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    """Readers skipped the new log's first events for the old log's archive, and a compaction purged
    the new log without archiving it ("nothing to compact")."""
    archive = tmp_path / "archive"
    below = await _compactable(bus, nats_url, database_url)
    await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)
    assert await compacted_below(bus) == below
    await bus.js.delete_stream(subjects.STREAM)
    await asyncio.sleep(1.1)  # a stream's creation time is its identity: made again within a second, it differs
    await ensure_stream(bus.js)
    first = await bus.publish(submitted())
    assert first == 1
    assert await compacted_below(bus) == 1, "the new log's readers would start at the old log's watermark"
    with pytest.raises(compact.Refused, match="the compaction record is of another log"):
        await compact.compact(bus, database_url, archive, keep_s=0, public_subjects=False)
    assert (await bus.js.get_msg(bus.stream, seq=first)).seq == first


async def test_a_snapshot_ahead_of_the_log_is_not_loaded(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str
) -> None:
    """A log that lost its last writes (NATS's unsynced tail, a backup restored) behind a snapshot:
    the scheduler started from the snapshot and never saw the events that took those sequences."""
    await _compactable(bus, nats_url, database_url, jobs=2)
    state = await snapshot.restore(bus)
    assert state is not None
    last = (await bus.js.stream_info(bus.stream)).state.last_seq
    state.last_seq = last + 40
    await snapshot.upload(bus, snapshot.dump(state, await which_log.log_identity(bus)))
    assert await snapshot.restore(bus) is None
    state.last_seq = last  # the same snapshot at the log's end is loaded
    await snapshot.upload(bus, snapshot.dump(state, await which_log.log_identity(bus)))
    assert await snapshot.restore(bus) is not None


async def test_an_archive_folder_it_cannot_use_is_said_in_one_line(
    bus: Bus, engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("not a folder\n")
    with pytest.raises(compact.Refused, match="cannot use the archive folder"):
        await compact.compact(bus, database_url, tmp_path / "file" / "archive", keep_s=0, public_subjects=False)
