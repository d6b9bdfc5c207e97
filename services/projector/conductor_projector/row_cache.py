"""The rows of the jobs still moving, as this projector last committed them: what spares a batch
its read of the rows it touches.

A job's events come over several batches (submitted, placed, started, ended), and each batch read
back the rows the one before had just written. The rows only change in the transaction that moves
the position, so the rows this projector committed are the stored ones for as long as nobody else
wrote the position's row since: its version (PostgreSQL's ``xmin``, the id of the transaction that
wrote it) is the one that commit left. Any other (another projector applied a batch, a rebuild
deleted the row and caught up again, a commit that failed may or may not have landed) means
nothing kept is used.

Only rows of jobs that are not finished are kept: a finished job's row never changes again, and
is rarely touched (a cancel that crossed its end). At most ``limit`` rows, the least recently
written dropped first: a deep queue's oldest jobs are read from PostgreSQL when their turn comes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from conductor_contracts.states import JobState
from conductor_projector.operations import Row

_MOVING = frozenset({JobState.PENDING.value, JobState.RUNNING.value})


class RowCache:
    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._rows: OrderedDict[int, Row] = OrderedDict()
        # The stored position the rows are true at, and the version of its row then; None: nothing.
        self._at: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def align(self, position: int, version: int) -> None:
        """The stored position and its row's version, read under its lock: what is kept is dropped
        unless this projector's last commit wrote that row as it is."""
        if self._at != (position, version):
            self.forget()

    def take(self, job_ids: Iterable[int]) -> dict[int, Row]:
        """Copies of the rows kept of ``job_ids`` (the caller folds events into them before they
        are committed, and a transaction rolled back must leave the kept ones as they were)."""
        rows = self._rows
        return {job_id: dict(row) for job_id in job_ids if (row := rows.get(job_id)) is not None}

    def committed(self, position: int, version: int, rows: Mapping[int, Row]) -> None:
        """The transaction that moved the position to ``position`` (writing its row's ``version``)
        committed, with ``rows`` as they now are stored; every job it touched is among them."""
        kept = self._rows
        for job_id, row in rows.items():
            if row["state"] in _MOVING:
                kept[job_id] = row
                kept.move_to_end(job_id)
            else:
                kept.pop(job_id, None)
        while len(kept) > self.limit:
            kept.popitem(last=False)
        self._at = (position, version)

    def forget(self) -> None:
        self._rows.clear()
        self._at = None
