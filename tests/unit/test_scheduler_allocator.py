"""Free memory given back when the log turns quiet (allocator.py): only after events, at most so often."""

from __future__ import annotations

import platform

import pytest

from conductor_scheduler import allocator


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _give_back(clock: Clock) -> tuple[allocator.GiveBack, list[int]]:
    calls: list[int] = []
    give_back = allocator.GiveBack(clock, every_s=10.0)

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    give_back.trim = trim
    return give_back, calls


def test_given_back_when_the_log_turns_quiet_after_events() -> None:
    clock = Clock()
    give_back, calls = _give_back(clock)
    assert not give_back.quiet()  # nothing folded yet: nothing freed to give back
    give_back.busy()
    assert give_back.quiet() and calls == [0]
    assert not give_back.quiet()  # still quiet: done already


def test_at_most_once_every_interval() -> None:
    clock = Clock()
    give_back, calls = _give_back(clock)
    give_back.busy()
    give_back.quiet()
    clock.now += 5
    give_back.busy()
    assert not give_back.quiet()
    clock.now += 5
    assert give_back.quiet()
    assert len(calls) == 2


def test_never_without_malloc_trim() -> None:
    give_back = allocator.GiveBack(Clock())
    give_back.trim = None
    give_back.busy()
    assert not give_back.quiet()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_s_malloc_trim_is_found_and_runs() -> None:
    trim = allocator._malloc_trim()
    assert trim is not None
    trim(0)
