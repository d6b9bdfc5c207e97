"""The part of the log `conductor compact` moved into the archive, applied to the read models when the
projector's position is below it: a rebuild, or a projector that starts with an empty database on a
compacted log. The stream alone would give read models without the archived jobs, users and nodes,
so the projector applies the archive first, or projects nothing until it can."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_platform.archive import compacted_below, covers, read_archive
from conductor_platform.bus import Bus
from conductor_projector import sink
from conductor_projector.operations import Item, decode
from conductor_projector.settings import ProjectorSettings

log = logging.getLogger("conductor.projector")


class ArchiveMissing(Exception):
    """The log was compacted past the position and the archive does not hold what lies between."""


async def apply_archived(engine: AsyncEngine, bus: Bus, settings: ProjectorSettings, position: int) -> int:
    """Apply what the archive holds past ``position`` and below the compacted part's end, in batches,
    each committed with the position it reaches; returns the new position."""
    below = await compacted_below(bus)
    if position + 1 >= below:
        return position
    archive = Path(settings.archive_dir)
    if not covers(archive, position + 1, below):
        raise ArchiveMissing(
            f"the log was compacted below sequence {below} and the archive at {archive} does not hold "
            f"sequences {position + 1}-{below - 1} (set CONDUCTOR_ARCHIVE_DIR)"
        )
    log.info("applying the archive", extra={"from_seq": position + 1, "below": below, "archive": str(archive)})
    batch: list[tuple[int, Item]] = []
    subjects: dict[int, str] = {}
    for seq, subject, data, _ in read_archive(archive, position + 1):
        if seq >= below:
            break
        batch.append((seq, decode(subject, data)))
        subjects[seq] = subject
        if len(batch) >= settings.batch_size:
            position = await _apply(engine, settings, batch, subjects, position)
            batch, subjects = [], {}
    if batch:
        position = await _apply(engine, settings, batch, subjects, position)
    log.info("archive applied", extra={"position": position})
    return position


async def _apply(
    engine: AsyncEngine, settings: ProjectorSettings, batch: list[tuple[int, Item]], subjects: dict[int, str], at: int
) -> int:
    # Where the archive skips sequences (messages deleted before it was written), it is the log:
    # nothing lies in between, as for the first batch of a read from the stream.
    read_from = batch[0][0] if batch[0][0] != at + 1 else None
    return await sink.apply_batch(engine, settings.consumer, batch, read_from=read_from, subjects=subjects)
