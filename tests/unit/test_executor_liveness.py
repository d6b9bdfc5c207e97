"""Node liveness on the executor's side, without NATS: the silence that fences, with a fake clock;
which runs a NodeLost ends; what a fenced or lost run reports."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import nats.js.errors

from conductor_contracts import events as ev
from conductor_executor import supervision as sv
from conductor_executor.heartbeat import Heartbeat, Silence
from conductor_executor.liveness import ended_by_loss, read_mark, write_mark
from conductor_executor.outcomes import FENCED, outcome_event
from conductor_executor.service import Executor
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus


def test_silence_fences_once_past_the_bound_and_a_beat_ends_it() -> None:
    silence = Silence(30.0, now=100.0)
    assert not silence.failed(110.0) and not silence.failed(130.0)  # exactly the bound: not yet
    assert silence.failed(130.5)  # past it: fence
    assert not silence.failed(131.0) and not silence.failed(500.0)  # once per silence
    assert silence.ok(501.0) == 401.0  # the silence lasted since the last good beat
    assert silence.ok(502.0) is None  # no silence to end
    assert not silence.failed(520.0) and silence.failed(532.5)  # a new silence fences again


def test_a_start_counts_as_a_beat() -> None:
    # An executor started while NATS is away fences only after a whole bound of its own.
    silence = Silence(5.0, now=1000.0)
    assert not silence.failed(1004.0) and silence.failed(1005.1)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_heartbeat_calls_for_fencing_after_the_silence_and_only_once() -> None:
    clock = _Clock()
    calls: list[float] = []
    registration = ev.NodeRegistered(node="n1", cpus=1, memory_mb=1)
    beat = Heartbeat(lambda: registration, 1.0, 10.0, calls.append, clock=clock)
    for second in range(0, 31):  # no bus at all: every beat fails at once
        clock.now = float(second)
        await beat.beat_once(None)
    assert calls == [11.0]


async def test_a_beat_on_a_disconnected_bus_fails_at_once() -> None:
    class _Nc:
        is_connected = False

    bus = Bus(nc=_Nc(), js=None)  # type: ignore[arg-type]
    beat = Heartbeat(lambda: ev.NodeRegistered(node="n1", cpus=1, memory_mb=1), 1.0, 10.0, lambda _: None)
    await asyncio.wait_for(beat.beat_once(bus), 0.5)
    assert beat.silence.failing


def test_a_node_lost_ends_the_runs_placed_before_it_only() -> None:
    assert ended_by_loss(10, 11)
    assert not ended_by_loss(12, 11)  # placed after the node registered again
    assert not ended_by_loss(None, 11)  # an older executor's record: not known, not killed
    assert not ended_by_loss(10, 0)  # no loss seen


def test_the_loss_mark_survives_and_tolerates_junk(tmp_path: Path) -> None:
    mark = tmp_path / "lost"
    assert read_mark(mark) == 0
    write_mark(mark, 42)
    assert read_mark(mark) == 42
    mark.write_text("junk")
    assert read_mark(mark) == 0


def test_a_fenced_run_ends_node_fail_with_its_run() -> None:
    event = outcome_event(5, "n1", 143, frozenset({sv.FENCED}), None, "lost", run=2)
    assert isinstance(event, ev.JobFailed) and event.node_fail and event.message == FENCED and event.run == 2
    # A user's cancel that came first still says what the user asked for.
    event = outcome_event(5, "n1", 143, frozenset({sv.FENCED, "cancelled"}), None, "lost", run=2)
    assert isinstance(event, ev.JobCancelled) and event.run == 2


def test_every_outcome_carries_its_run() -> None:
    for code, reasons in ((0, frozenset()), (1, frozenset()), (None, frozenset()), (143, frozenset({"timeout"}))):
        assert outcome_event(5, "n1", code, reasons, None, "lost", run=3).run == 3


def test_the_process_record_keeps_placement_and_requeue() -> None:
    record = sv.ProcessRecord(pid=10, started=1.0, supervised=True, placed_seq=77, requeue=True)
    back = sv.parse_process(record.to_json())
    assert back is not None and back.placed_seq == 77 and back.requeue
    older = sv.parse_process('{"pid": 10, "started": 1.0, "supervised": true}')
    assert older is not None and older.placed_seq is None and not older.requeue


class _Entry:
    def __init__(self, value: bytes, revision: int) -> None:
        self.value, self.revision = value, revision


class _Key:
    """The node's heartbeat key as nats-server keeps it: revisions, and update on the last one."""

    def __init__(self) -> None:
        self.entry: _Entry | None = None
        self.next = 1

    async def put(self, key: str, value: bytes) -> int:
        self.entry, self.next = _Entry(value, self.next), self.next + 1
        return self.entry.revision

    async def update(self, key: str, value: bytes, last: int) -> int:
        if self.entry is None or self.entry.revision != last:
            raise nats.js.errors.KeyWrongLastSequenceError()
        return await self.put(key, value)

    async def get(self, key: str) -> _Entry:
        assert self.entry is not None
        return self.entry


class _Bus:
    def __init__(self, kv: _Key) -> None:
        self.nc = type("Nc", (), {"is_connected": True})()
        self._kv = kv

    async def heartbeats(self) -> _Key:
        return self._kv


def _beating(kv: _Key) -> tuple[Heartbeat, list[str], Bus]:
    taken: list[str] = []
    registration = ev.NodeRegistered(node="n", cpus=1, memory_mb=100)
    beat = Heartbeat(lambda: registration, 1.0, 30.0, lambda _: None, instance="mine", on_replaced=taken.append)
    return beat, taken, cast(Bus, _Bus(kv))


async def test_a_beat_of_another_instance_over_this_ones_gives_the_node_up() -> None:
    kv = _Key()
    beat, taken, bus = _beating(kv)
    await beat.beat_once(bus)
    await beat.beat_once(bus)
    await kv.put("n", b'{"instance": "other", "pid": 7, "host": "h2"}')  # it took the node over
    await beat.beat_once(bus)
    assert taken == ["pid 7 on h2"] and beat.replaced


async def test_a_key_that_went_back_to_another_instances_beat_is_no_twin() -> None:
    # nats-server lost its last writes in a crash: what is left is the beat of the instance this one
    # replaced, at an older revision. Giving the node up would stop every job here for nothing.
    kv = _Key()
    await kv.put("n", b'{"instance": "replaced"}')
    beat, taken, bus = _beating(kv)
    await beat.beat_once(bus)
    await beat.beat_once(bus)
    kv.entry = _Entry(b'{"instance": "replaced"}', 1)  # the crash
    await beat.beat_once(bus)
    assert taken == [] and not beat.replaced and kv.entry.revision > 3


def test_what_a_replacing_executor_must_not_start_is_kept_across_its_restarts(tmp_path: Path) -> None:
    # Restarted on its own folder it is the same instance and finds its own heartbeat: nothing would
    # tell it again that the placements before its registration were the previous executor's.
    settings = ExecutorSettings(node="n", cpus=1, memory="1G", state_dir=tmp_path)
    (tmp_path / "n").mkdir()
    Executor(settings).liveness.replacing(42)
    again = Executor(settings).liveness
    assert again.replaced(41) and again.stale(41) and not again.replaced(42)


async def test_the_first_beat_after_the_start_is_written_over_the_start_s_own() -> None:
    # Frozen right after its start, an executor's first beat of the loop was a blind put: thawed after
    # another had taken the node over, it wrote over that one's beat and won the node back from it.
    kv = _Key()
    beat, taken, bus = _beating(kv)
    beat.written(await kv.put("n", b'{"instance": "mine"}'))  # the twin check's first beat
    await kv.put("n", b'{"instance": "other", "pid": 8, "host": "h3"}')  # took it over meanwhile
    await beat.beat_once(bus)
    assert taken == ["pid 8 on h3"]
