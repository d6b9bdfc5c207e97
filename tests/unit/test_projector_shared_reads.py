"""The projector's reads handed to the republisher: what is taken after a position is exactly what the
log holds after it, whatever the projector's reads did (restarts, empty reads, gaps left by deleted
messages), and the republisher is told where it stands otherwise."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hypothesis import example, given, settings
from hypothesis import strategies as st

from conductor_contracts import events as ev
from conductor_projector.shared_reads import SharedReads, Taken, Where


@dataclass
class FakeMsg:  # what SharedReads reads of a message: its bytes
    data: bytes


def offer(shared: SharedReads, after: int, seqs: list[int], size: int = 1) -> None:
    events = [(seq, ev.NodeDrained(node=f"n{seq}")) for seq in seqs]
    shared.offer(after, [FakeMsg(b"x" * size) for _ in seqs], events)  # type: ignore[misc]


def taken_seqs(result: Taken | Where) -> list[int]:
    assert isinstance(result, Taken), result
    return [seq for seq, _, _ in result.events]


def test_takes_what_follows_the_position_from_the_read_that_holds_it() -> None:
    shared = SharedReads()
    offer(shared, 0, [1, 2, 3])
    offer(shared, 3, [5, 6])  # 4 was deleted from the log
    assert taken_seqs(shared.take(0)) == [1, 2, 3]
    assert taken_seqs(shared.take(2)) == [3]
    assert taken_seqs(shared.take(3)) == [5, 6]
    assert taken_seqs(shared.take(4)) == [5, 6]
    assert shared.take(6) is Where.LEVEL
    assert shared.take(9) is Where.AHEAD


def test_nothing_read_or_behind_the_oldest_read_is_said_so() -> None:
    shared = SharedReads()
    assert shared.take(0) is Where.NOTHING
    offer(shared, 10, [11, 12])
    assert shared.take(9) is Where.BEHIND
    assert taken_seqs(shared.take(10)) == [11, 12]


def test_a_read_that_does_not_follow_the_last_one_starts_over() -> None:
    shared = SharedReads()
    offer(shared, 0, [1, 2, 3])
    offer(shared, 1, [2, 3, 4])  # the projector read again from its committed position
    assert shared.take(0) is Where.BEHIND
    assert taken_seqs(shared.take(1)) == [2, 3, 4]


def test_an_empty_read_marks_where_the_projector_reads_from() -> None:
    shared = SharedReads()
    offer(shared, 7, [])
    assert shared.take(7) is Where.LEVEL
    assert shared.take(5) is Where.BEHIND
    offer(shared, 7, [8])
    assert taken_seqs(shared.take(7)) == [8]
    offer(shared, 8, [])  # nothing new: the read kept stays
    assert taken_seqs(shared.take(7)) == [8]


def test_only_a_few_reads_are_kept_and_the_newest_always() -> None:
    shared = SharedReads(max_reads=2, max_bytes=100)
    for after in range(0, 4):
        offer(shared, after, [after + 1])
    assert shared.take(1) is Where.BEHIND
    assert taken_seqs(shared.take(2)) == [3]
    offer(shared, 4, [5], size=1000)  # over the bytes alone: kept, the others go
    assert shared.take(3) is Where.BEHIND
    assert taken_seqs(shared.take(4)) == [5]


def test_the_projector_progresses_while_its_reads_go_further_or_find_nothing_further() -> None:
    now = [100.0]
    shared = SharedReads(clock=lambda: now[0])
    assert not shared.progressing(3.0)
    offer(shared, 0, [])  # idle at the log's end
    now[0] += 3.0
    assert shared.progressing(3.0)
    now[0] += 0.1
    assert not shared.progressing(3.0)
    offer(shared, 0, [1, 2])
    assert shared.progressing(3.0)


def test_reads_offered_again_from_behind_are_no_progress() -> None:
    # A batch that fails to apply (PostgreSQL refusing writes) is read again and again from the
    # projector's position: offered every second, those reads never reach what follows them, and
    # the republisher must not wait for them (review of 2026-12-02: the public subjects stopped).
    now = [100.0]
    shared = SharedReads(clock=lambda: now[0])
    offer(shared, 10, [11, 12])
    offer(shared, 12, [13, 14])
    for _ in range(10):
        now[0] += 1.0
        offer(shared, 10, [11, 12])
        offer(shared, 12, [13, 14])
    assert not shared.progressing(3.0)
    offer(shared, 14, [15])
    assert shared.progressing(3.0)


def test_a_wait_ends_at_an_offer() -> None:
    shared = SharedReads()

    async def scenario() -> None:
        waiting = asyncio.create_task(shared.wait(30))
        await asyncio.sleep(0)
        offer(shared, 0, [1])
        await asyncio.wait_for(waiting, 5)
        offer(shared, 1, [2])  # made before the wait: it ends at once
        await asyncio.wait_for(shared.wait(30), 5)

    asyncio.run(scenario())


# A projector's life: ("read", n) reads the next n stored events (0: an empty read), ("restart", k)
# reads again from k events before where it is (its committed position); a republisher step takes
# what follows its position, or reads ("own") the next events of the log itself.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(0, 4)),
        st.tuples(st.just("restart"), st.integers(0, 6)),
        st.tuples(st.just("take"), st.integers(1, 3)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(gaps=st.lists(st.integers(1, 3), min_size=1, max_size=40), steps=steps)
@example(gaps=[1, 1, 1], steps=[("read", 2), ("take", 1), ("restart", 2), ("read", 3), ("take", 1)])
def test_the_republisher_publishes_the_log_in_order_each_event_once(
    gaps: list[int], steps: list[tuple[str, int]]
) -> None:
    log: list[int] = []
    for gap in gaps:  # stored sequences, with gaps where messages were deleted
        log.append((log[-1] if log else 0) + gap)
    shared = SharedReads(max_reads=3)
    read_upto = 0  # index into log: what the projector's reader has read
    published: list[int] = []
    position = 0
    for action, n in steps:
        if action == "read":
            after = log[read_upto - 1] if read_upto else 0
            offer(shared, after, log[read_upto : read_upto + n])
            read_upto = min(len(log), read_upto + n)
        elif action == "restart":
            read_upto = max(0, read_upto - n)
        else:
            result = shared.take(position)
            # Else its own reader: the next stored events after its position.
            own = [seq for seq in log if seq > position][:n]
            got = taken_seqs(result) if isinstance(result, Taken) else own
            published += got
            position = got[-1] if got else position
    assert published == [seq for seq in log if seq <= position]
