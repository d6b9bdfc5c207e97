"""What the event feed sends and how it selects it: pure, no NATS, no HTTP.

An item is one event of the log with the ids a client filters on: its job (for JobSubmitted the job
id is its own stream sequence), and the job's account and workflow, which most job events do not
carry and are looked up from the job's JobSubmitted (``conductor_platform.jobs``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from conductor_contracts import events as ev
from conductor_contracts.catalogue import EVENT_TYPES
from conductor_contracts.public import JobContext, job_id_of


@dataclass(frozen=True)
class FeedItem:
    seq: int
    event: ev.Event
    job_id: int | None
    account: str | None
    workflow_id: str | None

    @property
    def type(self) -> str:
        return self.event.type

    def data(self) -> dict[str, Any]:
        """The event's JSON, with its job and, where known, the job's account and workflow."""
        extra = {"job_id": self.job_id, "account": self.account, "workflow_id": self.workflow_id}
        known = {key: value for key, value in extra.items() if value is not None}
        return self.event.model_dump(mode="json") | known


def item(seq: int, event: ev.Event, job: JobContext | None) -> FeedItem:
    """``job``: the context of the event's job (None for an event of no job). A WorkflowSubmitted
    has its workflow but no account (its jobs each have theirs; ``owner`` is a user name)."""
    if isinstance(event, ev.WorkflowSubmitted):
        return FeedItem(seq=seq, event=event, job_id=None, account=None, workflow_id=event.workflow_id)
    return FeedItem(
        seq=seq,
        event=event,
        job_id=job_id_of(seq, event),
        account=job.account if job else None,
        workflow_id=job.workflow_id if job else None,
    )


_NAMED = 5


def parse_types(values: Iterable[str]) -> frozenset[str] | None:
    """``type`` as given (repeated and/or comma-separated); None for no filter on types.
    Raises ValueError naming what is not an event type."""
    names = {part.strip() for value in values for part in value.split(",") if part.strip()}
    unknown = sorted(names - EVENT_TYPES.keys())
    if unknown:
        # The first few: 3,000 unknown names made a 32 KB answer.
        named = ", ".join(map(repr, unknown[:_NAMED])) + (
            f" and {len(unknown) - _NAMED} more" if len(unknown) > _NAMED else ""
        )
        raise ValueError(f"unknown event type {named}; known types: {', '.join(EVENT_TYPES)}")
    return frozenset(names) or None


@dataclass(frozen=True)
class FeedFilter:
    """Every condition given must hold; an event that lacks the id a condition names does not match
    (a node event never matches a job_id filter)."""

    job_id: int | None = None
    workflow_id: str | None = None
    account: str | None = None
    types: frozenset[str] | None = None

    def matches(self, it: FeedItem) -> bool:
        return (
            (self.types is None or it.type in self.types)
            and (self.job_id is None or it.job_id == self.job_id)
            and (self.account is None or it.account == self.account)
            and (self.workflow_id is None or it.workflow_id == self.workflow_id)
        )


# Server-Sent Events, as the HTML standard frames them: fields one a line, a blank line ends an event.
# The data is one line of JSON (json.dumps escapes every newline), so it needs no splitting.
KEEPALIVE = b": keepalive\n\n"


def keepalive(passed: int) -> bytes:
    """A keepalive that also moves the client's Last-Event-ID past events its filter skipped: a block
    with an id and no data sets the id and dispatches nothing (HTML standard, "dispatch the event").
    Else a client of a quiet account resumed from its last match each time, far behind, and after
    ``conductor compact`` was told of a compaction at every reconnect."""
    return f": keepalive\nid: {passed}\n\n".encode()


def sse(it: FeedItem) -> bytes:
    return f"id: {it.seq}\nevent: {it.type}\ndata: {json.dumps(it.data(), separators=(',', ':'))}\n\n".encode()


def notice(kind: str, last_event_id: int, detail: str, **more: int) -> bytes:
    """A message that is not an event of the log (``overflow``, ``error``, ``compacted``); no id, so
    the client's Last-Event-ID stays the last event it was sent."""
    data = json.dumps({"last_event_id": last_event_id, "detail": detail, **more})
    return f"event: {kind}\ndata: {data}\n\n".encode()


def compacted(last_event_id: int, below: int) -> bytes:
    """Sent first to a client resuming inside the compacted part of the log: what it asked for is in
    the archive, not the stream, and the feed goes on with what the stream holds."""
    detail = (
        f"events {last_event_id + 1} to {below - 1} were moved to the archive by compaction; "
        "the feed goes on with the events the log still holds"
    )
    return notice("compacted", last_event_id, detail, compacted_below=below)
