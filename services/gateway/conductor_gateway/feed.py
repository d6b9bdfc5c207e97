"""GET /events: the log of record as Server-Sent Events, for automation (``client_feed.py`` streams).

Each event is sent with ``id:`` its stream sequence, so a client that reconnects with Last-Event-ID
(every EventSource does) or ``?since=<seq>`` gets exactly the events after it; without either, it
gets the events from now on, and ``?since=0`` the whole log. A position inside the compacted part of
the log (``conductor compact``) is first sent a ``compacted`` message naming where the stream resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BeforeValidator
from starlette.types import Message, Receive, Scope, Send

from conductor_gateway import queries
from conductor_gateway.backends import State
from conductor_gateway.client_feed import ClientFeed, FeedLimits
from conductor_gateway.errors import digits, documented
from conductor_gateway.feed_items import FeedFilter, compacted, parse_types
from conductor_gateway.params import Filter
from conductor_gateway.settings import GatewaySettings
from conductor_platform.archive import compacted_below
from conductor_platform.jobs import JobDirectory

log = logging.getLogger("conductor.gateway.feed")

MAX_SEQ = 2**63 - 1
# How long past events_stall_s one write to a client may wait before its feed is ended.
SEND_GRACE_S = 10.0


class _NotReading(Exception):
    pass


class FeedResponse(StreamingResponse):
    """Closes its feed (reader, consumer) however the response ends: finished, failed, cut by the
    client, or given up on a client that takes no bytes for ``stall_s`` and SEND_GRACE_S. The body generator's own
    ``finally`` would not run while it waits in a send that is cancelled."""

    def __init__(self, feed: ClientFeed, release: Callable[[], None], stall_s: float) -> None:
        super().__init__(
            feed.stream(),
            media_type="text/event-stream",
            # Proxies must pass each event on as it comes (nginx buffers unless told not to).
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._feed, self._release, self._stall_s = feed, release, stall_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def bounded(message: Message) -> None:
            # A client that reads nothing blocks the send for as long as it stays connected, the
            # overflow notice's too: its feed slot and its consumer were held all that time. One
            # that reads again soon after its stall still gets its notice.
            try:
                with anyio.fail_after(self._stall_s + SEND_GRACE_S):
                    await send(message)
            except TimeoutError:
                raise _NotReading from None

        try:
            await super().__call__(scope, receive, bounded)
        except* _NotReading:
            log.info("feed client took no bytes for %s s: its feed ends", self._stall_s + SEND_GRACE_S)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._feed.close()
                finally:
                    self._release()


class FeedSlots:
    """The feeds open at once on this gateway, at most ``limit``: each holds a consumer on the log's
    stream, and a stream takes a bounded number of them (executors and services need theirs)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.open = limit, 0

    def take(self) -> None:
        if self.open >= self.limit:
            detail = f"this gateway serves {self.limit} event feeds at once (CONDUCTOR_EVENTS_MAX_CLIENTS); retry later"
            raise HTTPException(503, detail, headers={"Retry-After": "5"})
        self.open += 1

    def release(self) -> None:
        self.open -= 1


def router(state: State, settings: GatewaySettings) -> APIRouter:
    api = APIRouter()
    # A job whose submission was compacted away is found in the read models (compaction never passes
    # their position): its later events keep their account and workflow.
    directory = JobDirectory(
        settings.events_job_cache, archived=lambda job_id: queries.job_context(state.engine, job_id)
    )
    limits = FeedLimits(settings.events_heartbeat_s, settings.events_buffer, settings.events_stall_s)
    slots = FeedSlots(settings.events_max_clients)

    @api.get(
        "/events",
        response_class=FeedResponse,
        status_code=200,
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "`id:` stream sequence, `event:` event type, `data:` the event's JSON with job_id "
                "and, where known, account and workflow_id; `: keepalive` comments while idle (with an `id:` "
                "and no data past the events a filter skipped); a last `overflow` "
                "or `error` message (data: last_event_id) before the server ends the stream; first a `compacted` "
                "message (data: last_event_id, compacted_below) when the position asked for is in the archive",
            },
            **documented(409, 503),
        },
    )
    async def events(
        job_id: Annotated[
            int | None, BeforeValidator(digits), Query(ge=1, le=MAX_SEQ, description="events of this job")
        ] = None,
        workflow_id: Filter = None,
        account: Filter = None,
        type_: Annotated[
            list[str] | None,
            Query(alias="type", description="event type names, repeated or comma-separated (JobCompleted,JobFailed)"),
        ] = None,
        since: Annotated[
            int | None,
            BeforeValidator(digits),
            Query(ge=0, le=MAX_SEQ, description="start after this stream sequence (0: from the start)"),
        ] = None,
        last_event_id: Annotated[
            int | None,
            BeforeValidator(digits),
            Header(alias="Last-Event-ID", ge=0, le=MAX_SEQ, description="resume: wins over since"),
        ] = None,
    ) -> FeedResponse:
        try:
            types = parse_types(type_ or ())
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        selected = FeedFilter(job_id=job_id, workflow_id=workflow_id, account=account, types=types)
        after = last_event_id if last_event_id is not None else since
        preamble = b""
        slots.take()
        try:
            last = int((await state.bus.js.stream_info(state.bus.stream)).state.last_seq)
            if after is None:  # from now: after what the log holds at this request
                after = last
            elif after > last:
                # No event of this log was sent with that id (a log restored or reset since, or a
                # typo): waiting there skipped every event up to it, without a word.
                detail = f"position {after} is past the end of the log (its last event is {last}): reconnect "
                raise HTTPException(409, detail + "without Last-Event-ID to follow from now, or with ?since=0")
            elif after + 1 < (below := await compacted_below(state.bus)):
                # From the mark: what compaction kept below it (users, its last decision) is in the
                # archive too, and sent after the notice it came twice to a client reading both.
                preamble, after = compacted(after, below), below - 1
            feed = await ClientFeed.open(state.bus, after + 1, selected, directory, limits, preamble)
        except BaseException:
            slots.release()
            raise
        return FeedResponse(feed, slots.release, settings.events_stall_s)

    return api
