"""The projector's two readers of the log share each decoded event, and never get one for other bytes."""

from hypothesis import given, settings
from hypothesis import strategies as st

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_projector.decoded import SharedDecoder
from conductor_projector.operations import Undecodable, decode
from tests.unit.scheduling import submitted

STARTED = ev.encode(ev.JobStarted(job_id=1, node="n", pid=2))
PLACED = ev.encode(ev.JobPlaced(job_id=1, node="n", cores=(0,), memory_mb=1))


def test_the_second_reader_gets_the_event_the_first_decoded_and_it_is_then_gone() -> None:
    shared = SharedDecoder()
    first = shared.decode(5, "s", STARTED)
    assert shared.decode(5, "s", STARTED) is first and shared.hits == 1
    again = shared.decode(5, "s", STARTED)  # a third read (after a restart) decodes again
    assert again == first and again is not first


def test_other_bytes_or_another_subject_at_the_same_sequence_are_decoded_for_themselves() -> None:
    shared = SharedDecoder()
    shared.decode(5, "s", STARTED)
    assert shared.decode(5, "s", PLACED) == decode("s", PLACED)
    shared.decode(6, "s", b"{")
    other = shared.decode(6, "t", b"{")
    assert isinstance(other, Undecodable) and other.subject == "t"
    assert shared.hits == 0


def test_only_the_newest_events_are_kept() -> None:
    shared = SharedDecoder(limit=2)
    for seq in (1, 2, 3):
        shared.decode(seq, "s", STARTED)
    shared.decode(1, "s", STARTED)
    assert shared.hits == 0
    shared.decode(3, "s", STARTED)
    assert shared.hits == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.sampled_from(["a", "b"]), st.sampled_from([STARTED, PLACED, b"x"]))))
def test_whatever_the_order_of_reads_each_gets_what_decode_gives(reads: list[tuple[int, str, bytes]]) -> None:
    shared = SharedDecoder(limit=3)
    for seq, subject, data in reads:
        assert shared.decode(seq, subject, data) == decode(subject, data)


def test_the_shared_decoder_bounds_what_it_keeps_in_bytes_not_only_in_events() -> None:
    """With the republisher stalled the projector keeps every event it decodes, up to the count's
    limit: with scripts at the gateway's limit (900 KB) that was over 10 GB (found by review)."""
    decoder = SharedDecoder()
    for seq in range(1, 41):
        data = submitted().model_copy(update={"script": "x" * 900 * 1024}).model_dump_json().encode()
        decoder.decode(seq, subjects.SUBMITTED, data)
    kept = sum(len(data) for _, data, _ in decoder._items.values())
    assert kept <= 25 * 1024 * 1024, f"{kept / 2**20:.0f} MB kept for a reader that may never come"
    assert decoder.kept_bytes == 2 * kept
    # The newest are the ones kept, and a reader behind them still gets what decode gives.
    assert max(decoder._items) == 40 and decoder.decode(1, subjects.SUBMITTED, data) == decode(subjects.SUBMITTED, data)
