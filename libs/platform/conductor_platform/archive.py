"""The log's archive: what `conductor compact` moved out of the stream, as gzip'd JSON-lines segments
named by the sequences they hold, and the record (KV) of the sequence below which the stream no longer
holds the log. A reader that replays from the start reads the archive below that sequence and the stream
from it on."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from conductor_contracts import subjects
from conductor_platform.bus import Bus

COMPACTION_KEY = "log"
Record = tuple[int, str, bytes, dict[str, str] | None]


async def compaction_bucket(bus: Bus) -> KeyValue:
    try:
        return await bus.js.key_value(subjects.COMPACTION_BUCKET)
    except NotFoundError:
        config = KeyValueConfig(bucket=subjects.COMPACTION_BUCKET, storage=StorageType.FILE, replicas=bus.replicas)
        return await bus.js.create_key_value(config=config)


async def compacted_below(bus: Bus) -> int:
    """The sequence below which the log was compacted into the archive (1: never compacted)."""
    try:
        entry = await (await bus.js.key_value(subjects.COMPACTION_BUCKET)).get(COMPACTION_KEY)
    except NotFoundError:
        return 1
    return int(json.loads(entry.value or b"{}").get("below", 1))


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
