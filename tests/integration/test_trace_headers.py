"""The traceparent header on a real JetStream: it rides on every kind of publish, and it changes
neither deduplication (the Nats-Msg-Id stays ours) nor fencing (the expected-sequence headers win)."""

from __future__ import annotations

import pytest

from conductor_contracts import events as ev
from conductor_platform.bus import Bus, FencedOut
from tests.unit.scheduling import submitted

pytestmark = pytest.mark.integration

ONE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
OTHER = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"


async def _headers(bus: Bus, seq: int) -> dict[str, str]:
    return dict((await bus.js.get_msg(bus.stream, seq=seq)).headers or {})


async def test_a_retry_with_another_trace_is_still_a_duplicate(bus: Bus) -> None:
    event = ev.JobCancelRequested(job_id=1)
    first = await bus.publish_acked(event, msg_id="cancel:1", headers={"traceparent": ONE})
    # A caller's Nats-Msg-Id among its headers does not replace the one deduplication relies on.
    again = await bus.publish_acked(event, msg_id="cancel:1", headers={"traceparent": OTHER, "Nats-Msg-Id": "x"})
    assert again.duplicate and again.seq == first.seq
    assert (await _headers(bus, first.seq))["traceparent"] == ONE


async def test_a_fenced_decision_carries_its_trace_and_is_still_fenced(bus: Bus) -> None:
    sneaky = {"traceparent": ONE, "Nats-Expected-Last-Subject-Sequence": "999"}
    first = await bus.publish_fenced(ev.JobReasonChanged(job_id=1, reason="a"), 0, sneaky)
    assert (await _headers(bus, first))["traceparent"] == ONE
    with pytest.raises(FencedOut):
        await bus.publish_fenced(ev.JobReasonChanged(job_id=1, reason="b"), 0, {"traceparent": OTHER})


async def test_every_message_of_a_batch_carries_the_trace(bus: Bus) -> None:
    last = await bus.publish_batch([submitted(), submitted()], headers={"traceparent": ONE})
    assert [(await _headers(bus, seq)).get("traceparent") for seq in (last - 1, last)] == [ONE, ONE]
