"""What the fold knows of every job's state, and the pending jobs a dependency holds back.

A dependency's conditions each settle once (``conductor_contracts.dependencies``), so a held job
keeps counts of its settled conditions and is looked at again only when a job it watches changes
state: a fan-in of a thousand parents costs a thousand updates, not a million re-evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conductor_contracts.dependencies import Dependency, Kind, Verdict, combine, settle
from conductor_contracts.states import JobState

_STATES = list(JobState)
Key = tuple[str, str]  # (account, name): what ``singleton`` compares


@dataclass
class JobStates:
    """Every job's state, one byte per stream sequence from the first job folded on: a million jobs
    take a megabyte, and a dependency on any earlier job is settled from it."""

    base: int = 0
    codes: bytearray = field(default_factory=bytearray)

    def add(self, job_id: int) -> None:
        if not self.codes:
            self.base = job_id
        at = job_id - self.base
        if at < 0:
            return  # sequences only grow; the fold never folds one twice
        if at >= len(self.codes):
            self.codes.extend(bytes(at + 1 - len(self.codes)))
        self.codes[at] = _STATES.index(JobState.PENDING) + 1

    def get(self, job_id: int) -> JobState | None:
        at = job_id - self.base
        if not 0 <= at < len(self.codes) or not self.codes[at]:
            return None
        return _STATES[self.codes[at] - 1]

    def set(self, job_id: int, state: JobState) -> bool:
        """Move a known job that has not ended to ``state``; False when nothing changed."""
        current = self.get(job_id)
        if current is None or current.is_terminal or current is state:
            return False
        self.codes[job_id - self.base] = _STATES.index(state) + 1
        return True


@dataclass
class Waiter:
    dependency: Dependency
    verdicts: list[Verdict]
    holds: int = 0
    never: int = 0

    def record(self, index: int, verdict: Verdict) -> None:
        self.verdicts[index] = verdict
        self.holds += verdict is Verdict.HOLDS
        self.never += verdict is Verdict.NEVER

    @property
    def verdict(self) -> Verdict:
        return combine(self.holds, self.never, len(self.verdicts), any_of=self.dependency.any_of)


@dataclass
class Holds:
    states: JobStates = field(default_factory=JobStates)
    waiting: dict[int, Waiter] = field(default_factory=dict)
    # job id -> (held job, condition index) of the conditions on it not yet settled
    watchers: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    singletons: dict[Key, list[tuple[int, int]]] = field(default_factory=dict)
    # Jobs not ended, by (account, name), in submit order: what a singleton waits behind.
    active: dict[Key, dict[int, None]] = field(default_factory=dict)
    key_of: dict[int, Key] = field(default_factory=dict)

    def submitted(self, job_id: int, key: Key) -> None:
        self.states.add(job_id)
        self.active.setdefault(key, {})[job_id] = None
        self.key_of[job_id] = key

    def _singleton_clear(self, job_id: int, key: Key) -> bool:
        earliest = next(iter(self.active.get(key, {})), job_id)
        return earliest >= job_id

    def hold(self, job_id: int, dependency: Dependency) -> Verdict:
        """Start following a new job's dependency; its verdict now (WAIT: it is held)."""
        waiter = Waiter(dependency, [Verdict.WAIT] * len(dependency.conditions))
        key = self.key_of.get(job_id, ("", ""))
        for index, condition in enumerate(dependency.conditions):
            if condition.kind is Kind.SINGLETON:
                if self._singleton_clear(job_id, key):
                    waiter.record(index, Verdict.HOLDS)
                else:
                    self.singletons.setdefault(key, []).append((job_id, index))
                continue
            target = condition.job_id or 0
            # Only an earlier job can be depended on: a later id is no job yet, and never will be one
            # that existed when this job was submitted.
            verdict = settle(condition.kind, self.states.get(target) if target < job_id else None)
            if verdict is Verdict.WAIT:
                self.watchers.setdefault(target, []).append((job_id, index))
            else:
                waiter.record(index, verdict)
        verdict = waiter.verdict
        if verdict is Verdict.WAIT:
            self.waiting[job_id] = waiter
        return verdict

    def changed(self, job_id: int, state: JobState) -> dict[int, Verdict]:
        """``job_id`` is now in ``state``: the held jobs this settles, with their verdicts."""
        settled: dict[int, Verdict] = {}
        watching = self.watchers.pop(job_id, None)
        if watching:
            still: list[tuple[int, int]] = []
            for held, index in watching:
                waiter = self.waiting.get(held)
                if waiter is None:
                    continue  # decided, cancelled or placed meanwhile
                verdict = settle(waiter.dependency.conditions[index].kind, state)
                if verdict is Verdict.WAIT:
                    still.append((held, index))
                    continue
                waiter.record(index, verdict)
                self._conclude(held, waiter, settled)
            if still:
                self.watchers[job_id] = still
        if state.is_terminal:
            self._ended(job_id, settled)
        return settled

    def _ended(self, job_id: int, settled: dict[int, Verdict]) -> None:
        key = self.key_of.pop(job_id, None)
        if key is None:
            return
        jobs = self.active.get(key)
        if jobs is not None:
            jobs.pop(job_id, None)
            if not jobs:
                del self.active[key]
        waiting = self.singletons.pop(key, None)
        if not waiting:
            return
        still = []
        for held, index in waiting:
            waiter = self.waiting.get(held)
            if waiter is None:
                continue
            if self._singleton_clear(held, key):
                waiter.record(index, Verdict.HOLDS)
                self._conclude(held, waiter, settled)
            else:
                still.append((held, index))
        if still:
            self.singletons[key] = still

    def _conclude(self, held: int, waiter: Waiter, settled: dict[int, Verdict]) -> None:
        verdict = waiter.verdict
        if verdict is not Verdict.WAIT:
            del self.waiting[held]
            settled[held] = verdict

    def forget(self, job_id: int) -> None:
        """A held job left the queue (cancelled, or placed by a decision in the log)."""
        self.waiting.pop(job_id, None)
