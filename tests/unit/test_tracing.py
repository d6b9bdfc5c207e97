"""Traces without NATS: spans continue the traceparent they are given and hand on their own; nothing
is made when not tracing (the traceparent passes through); the JSON logs name the active span; the
scheduler's decisions continue the trace of their job's submission; the executor's outbox keeps an
event's traceparent on disk."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor import outbox as ob
from conductor_executor import supervision as sv
from conductor_platform import tracing
from conductor_platform.bus import Bus
from conductor_platform.logging import JsonFormatter
from conductor_platform.retry import Backoff
from conductor_scheduler import service
from conductor_scheduler.settings import SchedulerSettings
from tests.unit.scheduling import node, submitted

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)


def test_without_an_endpoint_nothing_is_set_up_and_a_traceparent_passes_through() -> None:
    assert not tracing.setup("gateway", environ={})
    assert not tracing.enabled()
    with tracing.span("anything", PARENT) as carried:
        assert carried == PARENT
        assert tracing.current_ids() is None
    with tracing.span("anything") as carried:
        assert carried is None
    assert tracing.of_request({"traceparent": PARENT}) is None  # a client's trace is not ours to carry


def test_a_span_continues_its_parent_and_hands_on_its_own(spans: InMemorySpanExporter) -> None:
    with tracing.span("child", PARENT, {tracing.JOB_ID: 7}) as carried:
        assert carried is not None and carried != PARENT
        tracing.annotate(**{tracing.NODE: "n1"})
    [span] = spans.get_finished_spans()
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == PARENT.split("-")[1]
    assert f"{span.parent.span_id:016x}" == PARENT.split("-")[2]
    assert carried == f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"
    assert dict(span.attributes or {}) == {tracing.JOB_ID: 7, tracing.NODE: "n1"}


@pytest.mark.parametrize(
    "value",
    [None, "", "garbage", PARENT.upper(), PARENT + "-extra", "00-" + "0" * 32 + "-b7ad6b7169203331-01", PARENT + "\n"],
)
def test_only_a_well_formed_traceparent_is_carried(value: str | None) -> None:
    headers = None if value is None else {"traceparent": value}
    assert tracing.of_headers(headers) is None
    assert tracing.headers(tracing.of_headers(headers)) == {}


def _log_line(**extra: Any) -> dict[str, Any]:
    record = logging.LogRecord("conductor.test", logging.INFO, __file__, 1, "placed", None, None)
    record.__dict__.update(extra)
    return dict(json.loads(JsonFormatter("scheduler").format(record)))


def test_a_log_line_names_the_active_trace_and_span_and_the_job(spans: InMemorySpanExporter) -> None:
    assert "trace_id" not in _log_line(job_id=3)
    with tracing.span("place", PARENT):
        line = _log_line(job_id=3)
    [span] = spans.get_finished_spans()
    assert span.context is not None
    assert line["trace_id"] == PARENT.split("-")[1] == f"{span.context.trace_id:032x}"
    assert line["span_id"] == f"{span.context.span_id:016x}"
    assert line["job_id"] == 3 and line["msg"] == "placed" and line["service"] == "scheduler"


class FencedBus:
    """Takes the scheduler's fenced publishes: sequences from 100 on, with their headers."""

    def __init__(self) -> None:
        self.nc = SimpleNamespace(stats={"reconnects": 0})
        self.published: list[tuple[ev.Event, dict[str, str]]] = []

    async def publish_fenced(self, event: ev.Event, expected: int, headers: dict[str, str] | None = None) -> int:
        self.published.append((event, headers or {}))
        return 100 + len(self.published)

    async def publish_fenced_batch(self, decisions: list[tuple[ev.Event, dict[str, str]]], expected: int) -> int:
        self.published.extend(decisions)
        return 100 + len(self.published)


async def test_the_placement_continues_the_trace_of_the_submission(spans: InMemorySpanExporter) -> None:
    bus = FencedBus()
    scheduler = service.Scheduler(cast(Bus, bus), SchedulerSettings(), None)
    scheduler.fold_message(1, "conductor.exec.n1.node.registered", ev.encode(node("n1", 2)))
    scheduler.fold_message(2, subjects.SUBMITTED, ev.encode(submitted()), {"traceparent": PARENT})
    scheduler.fold_message(3, subjects.SUBMITTED, ev.encode(submitted()))  # not traced: a trace of its own
    assert scheduler.state.pending[2].traceparent == PARENT and scheduler.state.pending[3].traceparent is None
    await scheduler.decide_and_publish()
    placed = {e.job_id: h for e, h in bus.published if isinstance(e, ev.JobPlaced)}
    assert set(placed) == {2, 3}
    by_job = {s.attributes[tracing.JOB_ID]: s for s in spans.get_finished_spans() if s.attributes}
    first, second = by_job[2], by_job[3]
    assert first.name == "conductor.scheduler.place" and first.parent is not None and first.context is not None
    assert f"{first.context.trace_id:032x}" == PARENT.split("-")[1]
    assert f"{first.parent.span_id:016x}" == PARENT.split("-")[2]
    assert placed[2]["traceparent"].split("-")[2] == f"{first.context.span_id:016x}"
    assert second.parent is None and second.context is not None
    assert placed[3]["traceparent"].split("-")[1] == f"{second.context.trace_id:032x}"


async def test_not_tracing_the_scheduler_passes_the_submission_trace_on() -> None:
    bus = FencedBus()
    scheduler = service.Scheduler(cast(Bus, bus), SchedulerSettings(), None)
    scheduler.fold_message(1, "conductor.exec.n1.node.registered", ev.encode(node("n1", 2)))
    scheduler.fold_message(2, subjects.SUBMITTED, ev.encode(submitted()), {"traceparent": PARENT})
    scheduler.fold_message(3, subjects.SUBMITTED, ev.encode(submitted()))
    await scheduler.decide_and_publish()
    assert [h for _, h in bus.published] == [{"traceparent": PARENT}, {}]


class Stream:
    def __init__(self) -> None:
        self.sent: list[tuple[ev.Event, dict[str, str]]] = []

    async def publish(self, event: ev.Event, headers: dict[str, str]) -> None:
        self.sent.append((event, headers))


async def _drain(outbox: ob.Outbox) -> None:
    for path in outbox.pending():
        assert await outbox._send(path)


async def test_the_outbox_keeps_the_traceparent_on_disk_and_publishes_it(tmp_path: Path) -> None:
    stream = Stream()
    outbox = ob.Outbox(tmp_path, stream.publish, Backoff(0.001, 0.002))
    started, completed = ev.JobStarted(job_id=4, node="n", pid=9), ev.JobCompleted(job_id=4, node="n")
    outbox.put(started, PARENT)
    outbox.put(completed)
    # A restarted executor reads them from the files.
    again = ob.Outbox(tmp_path, stream.publish, Backoff(0.001, 0.002))
    await _drain(again)
    assert stream.sent == [(started, {"traceparent": PARENT}), (completed, {})]


@pytest.mark.parametrize("tail", [b"\n", b"\nnot json", b'\n["a list"]', b'\n{"traceparent": "bad"}'])
def test_an_unreadable_header_line_loses_the_trace_not_the_event(tail: bytes) -> None:
    event = ev.JobCompleted(job_id=4, node="n")
    assert ob.decode(ev.encode(event) + tail) == (event, {})


def test_the_process_record_keeps_the_placement_trace() -> None:
    record = sv.ProcessRecord(pid=10, started=1.0, supervised=True, traceparent=PARENT)
    parsed = sv.parse_process(record.to_json())
    assert parsed is not None and parsed.traceparent == PARENT
    older = json.loads(record.to_json())
    del older["traceparent"]
    assert (sv.parse_process(json.dumps(older)) or record).traceparent is None
    older["traceparent"] = "nonsense"
    assert (sv.parse_process(json.dumps(older)) or record).traceparent is None
