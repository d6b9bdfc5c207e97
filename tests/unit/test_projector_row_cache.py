"""What the projector keeps of the rows it wrote: only jobs still moving, at most its limit, the
least recently written dropped first, never changed by a caller's folding."""

from __future__ import annotations

from typing import Any

from conductor_projector.row_cache import RowCache


def row(job_id: int, state: str = "PENDING") -> dict[str, Any]:
    return {"job_id": job_id, "state": state, "pid": None}


def test_rows_are_kept_while_the_position_s_row_is_as_their_commit_wrote_it() -> None:
    kept = RowCache()
    kept.committed(10, 700, {1: row(1), 2: row(2, "RUNNING")})
    kept.align(10, 700)
    assert set(kept.take([1, 2, 3])) == {1, 2}
    kept.align(10, 701)  # written again since, at the same position (a rebuild that caught up)
    assert kept.take([1, 2]) == {} and len(kept) == 0
    kept.committed(12, 702, {3: row(3)})  # known again from the next commit on
    kept.align(12, 702)
    assert set(kept.take([1, 2, 3])) == {3}
    kept.align(13, 702)  # another writer moved the position
    assert len(kept) == 0


def test_a_finished_job_is_dropped() -> None:
    kept = RowCache()
    kept.committed(1, 1, {1: row(1), 2: row(2)})
    kept.committed(2, 2, {1: row(1, "COMPLETED"), 2: row(2, "RUNNING")})
    assert set(kept.take([1, 2])) == {2}


def test_the_least_recently_written_go_first() -> None:
    kept = RowCache(limit=2)
    kept.committed(1, 1, {1: row(1), 2: row(2)})
    kept.committed(2, 2, {1: row(1, "RUNNING")})  # 1 written again: 2 is now the oldest
    kept.committed(3, 3, {3: row(3)})
    assert set(kept.take([1, 2, 3])) == {1, 3}
    none = RowCache(limit=0)
    none.committed(1, 1, {1: row(1)})
    assert len(none) == 0


def test_what_a_caller_folds_into_a_row_taken_is_not_kept() -> None:
    kept = RowCache()
    kept.committed(1, 1, {1: row(1)})
    taken = kept.take([1])
    taken[1]["state"] = "RUNNING"  # a transaction that then rolls back
    assert kept.take([1])[1]["state"] == "PENDING"
