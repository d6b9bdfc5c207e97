"""The scheduler's tracemalloc hook: a snapshot per SIGUSR1 when asked for, nothing at all otherwise."""

from __future__ import annotations

import asyncio
import os
import signal
import tracemalloc
from pathlib import Path

import pytest

from conductor_scheduler import memtrace


async def test_each_sigusr1_writes_a_whole_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(memtrace.ENV, str(tmp_path / "snapshots"))
    loop = asyncio.get_running_loop()
    memtrace.start()
    try:
        memtrace.on_signal(loop)
        for n in (1, 2):
            os.kill(os.getpid(), signal.SIGUSR1)
            path = tmp_path / "snapshots" / f"scheduler-{n}.tracemalloc"
            for _ in range(200):
                if path.exists():
                    break
                await asyncio.sleep(0.01)
            assert tracemalloc.Snapshot.load(str(path)).traces is not None
        assert not list((tmp_path / "snapshots").glob("*.part"))
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        tracemalloc.stop()


async def test_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memtrace.ENV, raising=False)
    loop = asyncio.get_running_loop()
    memtrace.start()
    memtrace.on_signal(loop)
    assert not tracemalloc.is_tracing()
    assert not loop.remove_signal_handler(signal.SIGUSR1)  # no handler was installed
