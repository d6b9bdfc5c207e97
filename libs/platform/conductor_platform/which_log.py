"""Which log a stream holds, and whether something made of a log (a snapshot, a position, the public
copies, the compaction record) is of the log the stream holds now.

A stream of the same name deleted and made again holds another log, whose sequences start over; a
nats-server restored from an older copy of its store (or that lost its unsynced tail) holds the same
log, ending earlier than what was made of it. Either way the events that take those sequences are not
the ones it was made of."""

from __future__ import annotations

from nats.js.api import StreamInfo

from conductor_platform.bus import Bus


def identity_of(info: StreamInfo) -> str:
    """The log's identity: its stream's creation time."""
    return str(info.created or "")


async def log_identity(bus: Bus) -> str:
    return identity_of(await bus.js.stream_info(bus.stream))


def other_log(info: StreamInfo, made_of: str | None, position: int) -> str | None:
    """Why what was made of the log ``made_of`` (None: not known) up to ``position`` is not of the log
    ``info`` describes; None when it is."""
    if made_of is not None and made_of != identity_of(info):
        return "the log's stream was deleted and made again since"
    last = int(info.state.last_seq or 0)
    if position > last:
        return f"the log ends at {last}, before {position}: its server lost its last writes"
    return None
