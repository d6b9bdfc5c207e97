"""Job dependencies, as sbatch's ``--dependency`` has them, and how each condition settles.

    afterok:12:13,afterany:14      every condition must hold (',')
    afterok:12?afternotok:13       any one condition is enough ('?')
    singleton                      no earlier job of the same name and account is still active

A condition settles once and for good: ``after`` when its job has left PENDING (started, or ended
without starting); ``afterany`` when it has ended; ``afterok`` when it ended COMPLETED (and can never
hold when it ended otherwise); ``afternotok`` the other way round. So a dependency is decided by
counting settled conditions, and a job whose dependency can no longer hold is cancelled with reason
``DependencyNeverSatisfied`` (Slurm's ``kill_invalid_depend``), never left pending for ever.
"""

from __future__ import annotations

import re
from enum import Enum, StrEnum

from pydantic import BaseModel, ConfigDict, Field

from conductor_contracts.parsing import shown
from conductor_contracts.states import JobState

MAX_CONDITIONS = 1000
MAX_JOB_ID = 2**63 - 1


class Kind(StrEnum):
    AFTER = "after"
    AFTERANY = "afterany"
    AFTEROK = "afterok"
    AFTERNOTOK = "afternotok"
    SINGLETON = "singleton"


class Condition(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Kind
    job_id: int | None = Field(default=None, ge=1, le=MAX_JOB_ID)  # None for singleton


class Dependency(BaseModel):
    model_config = ConfigDict(frozen=True)

    conditions: tuple[Condition, ...] = Field(min_length=1, max_length=MAX_CONDITIONS)
    any_of: bool = False  # '?': one condition is enough; ',': all of them

    def __str__(self) -> str:
        terms: list[str] = []
        for c in self.conditions:
            if c.kind is Kind.SINGLETON:
                terms.append("singleton")
            elif terms and terms[-1].startswith(f"{c.kind.value}:") and not self.any_of:
                terms[-1] += f":{c.job_id}"
            else:
                terms.append(f"{c.kind.value}:{c.job_id}")
        return ("?" if self.any_of else ",").join(terms)

    @property
    def job_ids(self) -> list[int]:
        return sorted({c.job_id for c in self.conditions if c.job_id is not None})


_ID = re.compile(r"^[0-9]{1,19}$", re.ASCII)
_UNSUPPORTED = {"aftercorr", "afterburstbuffer", "expand"}


def parse(text: str) -> Dependency:
    """sbatch's syntax; raises ``ValueError`` with a message fit for a user."""
    text = text.strip()
    if not text:
        raise ValueError("dependency is empty")
    if "," in text and "?" in text:
        raise ValueError("a dependency uses ',' (all) or '?' (any), not both")
    any_of = "?" in text
    conditions: list[Condition] = []
    for term in text.split("?" if any_of else ","):
        kind_text, _, ids = term.strip().partition(":")
        if kind_text == Kind.SINGLETON.value and not ids:
            conditions.append(Condition(kind=Kind.SINGLETON))
            continue
        if kind_text in _UNSUPPORTED:
            raise ValueError(f"dependency type '{kind_text}' is not supported")
        try:
            kind = Kind(kind_text)
        except ValueError:
            raise ValueError(
                f"unknown dependency type {shown(kind_text)}: after, afterany, afterok, afternotok or singleton"
            ) from None
        if kind is Kind.SINGLETON:
            raise ValueError("'singleton' takes no job ids: it waits for the jobs of the same name and account")
        if not ids:
            raise ValueError(f"'{kind.value}' takes job ids: {kind.value}:<job_id>[:<job_id>...]")
        for job_text in ids.split(":"):
            if "+" in job_text:
                raise ValueError("a time delay after a job ('+minutes') is not supported")
            if not _ID.match(job_text) or not 1 <= int(job_text) <= MAX_JOB_ID:
                raise ValueError(f"{shown(job_text)} is not a job id")
            conditions.append(Condition(kind=kind, job_id=int(job_text)))
        if len(conditions) > MAX_CONDITIONS:
            raise ValueError(f"a dependency holds at most {MAX_CONDITIONS} conditions")
    return Dependency(conditions=tuple(dict.fromkeys(conditions)), any_of=any_of)


def on_parents(job_ids: list[int]) -> Dependency:
    """A workflow job's dependency: every parent COMPLETED."""
    return Dependency(conditions=tuple(Condition(kind=Kind.AFTEROK, job_id=j) for j in job_ids))


class Verdict(Enum):
    WAIT = 0
    HOLDS = 1
    NEVER = 2


def settle(kind: Kind, state: JobState | None) -> Verdict:
    """One condition on a job in ``state`` (None: no such job, which nothing can satisfy)."""
    if state is None:
        return Verdict.NEVER
    if kind is Kind.AFTER:
        return Verdict.WAIT if state is JobState.PENDING else Verdict.HOLDS
    if not state.is_terminal:
        return Verdict.WAIT
    if kind is Kind.AFTERANY:
        return Verdict.HOLDS
    completed = state is JobState.COMPLETED
    if kind is Kind.AFTEROK:
        return Verdict.HOLDS if completed else Verdict.NEVER
    return Verdict.NEVER if completed else Verdict.HOLDS  # afternotok


def combine(holds: int, never: int, total: int, *, any_of: bool) -> Verdict:
    """A dependency's verdict from how many of its ``total`` conditions hold and how many never will."""
    if any_of:
        return Verdict.HOLDS if holds else Verdict.NEVER if never == total else Verdict.WAIT
    return Verdict.NEVER if never else Verdict.HOLDS if holds == total else Verdict.WAIT
