"""The archive's segments: what is written is read back whole and in order, and a reader can tell
whether the archive holds the whole range it needs."""

from __future__ import annotations

import gzip
from pathlib import Path

from conductor_contracts import events as ev
from conductor_platform.archive import covers, encode_record, read_archive, segment_name, segments
from tests.unit.scheduling import node, submitted


def _segment(folder: Path, first: int, below: int, records: list[tuple[int, str, bytes]]) -> None:
    folder.mkdir(exist_ok=True)
    with gzip.open(folder / segment_name(first, below), "wt", encoding="utf-8") as out:
        for seq, subject, data in records:
            out.write(encode_record(seq, subject, data, {"traceparent": "x"} if seq % 2 else None))


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    events: list[ev.Event] = [node("n1", 2), submitted(), submitted(name="strange \u2028 \x00 name")]
    _segment(tmp_path, 1, 3, [(1, "a", ev.encode(events[0])), (2, "b", ev.encode(events[1]))])
    _segment(tmp_path, 3, 5, [(4, "c", ev.encode(events[2]))])  # 3 was deleted from the stream
    assert [(first, last) for first, last, _ in segments(tmp_path)] == [(1, 2), (3, 4)]
    records = list(read_archive(tmp_path))
    assert [(seq, subject) for seq, subject, _, _ in records] == [(1, "a"), (2, "b"), (4, "c")]
    assert [ev.decode(data) for _, _, data, _ in records] == events
    assert records[0][3] == {"traceparent": "x"} and records[1][3] is None
    assert [seq for seq, *_ in read_archive(tmp_path, from_seq=2)] == [2, 4]


def test_bytes_that_are_not_text_survive(tmp_path: Path) -> None:
    _segment(tmp_path, 1, 2, [(1, "a", b"\xff\xfe not utf-8")])
    assert list(read_archive(tmp_path)) == [(1, "a", b"\xff\xfe not utf-8", {"traceparent": "x"})]


def test_a_missing_segment_is_seen(tmp_path: Path) -> None:
    _segment(tmp_path, 1, 10, [])
    _segment(tmp_path, 20, 30, [])
    assert covers(tmp_path, 1, 10) and covers(tmp_path, 5, 10)
    assert not covers(tmp_path, 1, 30)  # 10-19 are nowhere
    assert covers(tmp_path, 20, 30) and not covers(tmp_path / "none", 1, 2)
    assert covers(tmp_path / "none", 5, 5)  # nothing needed
