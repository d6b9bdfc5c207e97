"""The log's archive: what `conductor compact` moved out of the stream, as gzip'd JSON-lines segments
named by the sequences they hold, and the record (KV) of the sequence below which the stream no longer
holds the log. A reader that replays from the start reads the archive below that sequence and the stream
from it on."""

from __future__ import annotations

import base64
import gzip
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from conductor_contracts import subjects
from conductor_platform.bus import Bus
from conductor_platform.which_log import other_log

log = logging.getLogger("conductor.archive")

COMPACTION_KEY = "log"
Record = tuple[int, str, bytes, dict[str, str] | None]


@dataclass(frozen=True)
class CompactionRecord:
    below: int  # the stream no longer holds the log below this sequence (1: never compacted)
    revision: int  # the record's KV revision (0: there is none), for a compare-and-set
    log: str | None  # the identity of the log it was made of; None: a record of an earlier version


async def compaction_record(bus: Bus) -> CompactionRecord:
    try:
        entry = await (await bus.js.key_value(subjects.COMPACTION_BUCKET)).get(COMPACTION_KEY)
    except NotFoundError:
        return CompactionRecord(1, 0, None)
    data = json.loads(entry.value or b"{}")
    identity = data.get("log")
    return CompactionRecord(int(data.get("below", 1)), int(entry.revision or 0), str(identity) if identity else None)


async def compaction_bucket(bus: Bus) -> KeyValue:
    try:
        return await bus.js.key_value(subjects.COMPACTION_BUCKET)
    except NotFoundError:
        config = KeyValueConfig(bucket=subjects.COMPACTION_BUCKET, storage=StorageType.FILE, replicas=bus.replicas)
        return await bus.js.create_key_value(config=config)


async def compacted_below(bus: Bus) -> int:
    """The sequence below which the log was compacted into the archive (1: never compacted). A record
    of another log (the stream was deleted and made again) says nothing of this one: its reader would
    skip this log's first events for the old log's archive (review of 2026-12-02)."""
    record = await compaction_record(bus)
    if record.log is not None and other_log(await bus.js.stream_info(bus.stream), record.log, 0):
        log.warning(
            "the compaction record is of another log (the stream was made again): this log is read from its start",
            extra={"recorded_below": record.below},
        )
        return 1
    return record.below


def segment_name(first: int, below: int) -> str:
    return f"conductor-{first:012d}-{below - 1:012d}.jsonl.gz"


def segments(archive: Path) -> list[tuple[int, int, Path]]:
    """The archive's segments as (first, last, path), in order."""
    found = []
    for path in archive.glob("conductor-*-*.jsonl.gz"):
        first, last = path.name.removesuffix(".jsonl.gz").split("-")[1:3]
        found.append((int(first), int(last), path))
    return sorted(found)


def covers(archive: Path, from_seq: int, below: int) -> bool:
    """Whether the archive's segments hold every sequence from ``from_seq`` up to ``below``."""
    need = from_seq
    for first, last, _ in segments(archive):
        if first <= need <= last:
            need = last + 1
    return need >= below


def read_archive(archive: Path, from_seq: int = 1) -> Iterator[Record]:
    """Every archived message from ``from_seq`` on, in order: (seq, subject, data, headers)."""
    for _, last, path in segments(archive):
        if last < from_seq:
            continue
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                record = decode_record(line)
                if record[0] >= from_seq:
                    yield record


def encode_record(seq: int, subject: str, data: bytes, headers: dict[str, str] | None) -> str:
    """One line of a segment. Events are JSON (UTF-8); anything else in the stream is kept as base64."""
    record: dict[str, object] = {"seq": seq, "subject": subject, "headers": headers}
    try:
        record["data"] = data.decode()
    except UnicodeDecodeError:
        record["data_b64"] = base64.b64encode(data).decode()
    return json.dumps(record, ensure_ascii=False) + "\n"


def decode_record(line: str) -> Record:
    record = json.loads(line)
    data = base64.b64decode(record["data_b64"]) if "data_b64" in record else record["data"].encode()
    return int(record["seq"]), str(record["subject"]), data, record.get("headers")
