"""The randomized chaos run (tests/chaos/randomized.py), short: every kind of fault once, a few dozen
jobs, the same checks as ``make chaos``. The seed is printed (``pytest -s``, or in the failure
report); ``CHAOS_SEED=N`` replays it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.chaos.randomized import FAULTS, Config, run

pytestmark = pytest.mark.chaos


def test_a_short_randomized_chaos_run_loses_nothing_and_runs_nothing_twice(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    config = Config(
        rounds=len(FAULTS),
        jobs=50,
        seed=seed,
        root=tmp_path,
        pause_s=(1.0, 3.0),
        each_fault_at_least=1,
        drain_timeout_s=120,
        submit_timeout_s=120,
    )
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        print(line)

    report = run(config, say=say)
    shown = "\n".join(lines)
    assert sorted(f.kind for f in report.faults) == sorted(FAULTS), shown
    assert all(f.back_s is not None for f in report.faults), shown
    assert report.acknowledged >= config.jobs and not report.given_up and not report.refused, shown
    assert report.lost == [], shown
    assert report.terminal == report.acknowledged + report.stored_without_acknowledgement, shown
    assert report.run_twice == [] and report.overlapping == [], shown
    assert report.duplicate_submissions == [] and report.duplicate_outcomes == [], shown
    assert report.completed_without_running == [] and report.ran_but_not_in_the_log == [], shown
    assert report.rebuild_diffs == {}, shown
    assert set(report.rows_compared) >= {"jobs", "nodes", "users", "workflows"}, shown
    assert report.defects == [], shown
