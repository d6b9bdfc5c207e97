"""The part of the log `conductor compact` moved into the archive, for a scheduler that must fold it:
one started without a usable snapshot (none stored, damaged, of an older format) on a compacted log.
Folding only what the stream still holds would give a wrong state (jobs whose submission was moved
would be unknown), so such a scheduler folds the archive first, or decides nothing until it can."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from conductor_platform.archive import compacted_below, covers, read_archive
from conductor_platform.bus import Bus

log = logging.getLogger("conductor.scheduler")


class Folder(Protocol):
    def fold_message(self, seq: int, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None: ...


async def fold_archived(bus: Bus, archive: Path, folder: Folder, after: int) -> int | None:
    """Fold what the archive holds after ``after`` (the last sequence folded) and below the compacted
    part's end; returns the last sequence now folded, or None when the archive does not hold it all."""
    below = await compacted_below(bus)
    if after + 1 >= below:
        return after
    if not covers(archive, after + 1, below):
        log.critical(
            "the log was compacted below sequence %d and the archive at %s does not hold sequences %d-%d: "
            "not deciding until it does (or a snapshot covering them is stored)",
            below,
            archive,
            after + 1,
            below - 1,
            extra={"below": below, "archive": str(archive)},
        )
        return None
    log.info("folding the archive", extra={"from_seq": after + 1, "below": below, "archive": str(archive)})
    for count, (seq, subject, data, headers) in enumerate(read_archive(archive, after + 1), start=1):
        if seq >= below:
            break
        folder.fold_message(seq, subject, data, headers)
        if count % 10_000 == 0:
            await asyncio.sleep(0)  # the heartbeat watcher and NATS pings go on meanwhile
    return below - 1
