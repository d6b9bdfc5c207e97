"""How far a lost node's executor was handed its messages, for the NodeLost to say.

A run placed after that point never reached the node and never started: the fold runs it again,
requeue or not, where it would otherwise end NODE_FAIL without having run (a node that dies with free
cores takes placements until it is declared lost). The node's consumer is paused first
(nats-server >= 2.11), so that nothing more is handed out between the look and the NodeLost being
stored: an executor alive but not beating (its heartbeat writes failing, its fetches not) could
otherwise take and start a placement the fold counts as never delivered, and the job would run twice.
The consumer is resumed once the NodeLost is stored or refused; a scheduler that dies in between
leaves it paused until ``PAUSE_S`` have passed (review of 2026-12-02: 60 s held the node's placements
and cancels that long). A NodeLost published later than ``FRESH_S`` after the pause might be stored
after the pause ended: it says nothing then. The pause's end is the scheduler's clock, which
nats-server reads with its own: a pause the server reads as much longer or shorter than asked (clocks
apart) is undone, and the NodeLost says nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus

log = logging.getLogger("conductor.scheduler")

PAUSE_S = 15.0
FRESH_S = 8.0


async def paused_at(bus: Bus, lost: ev.NodeLost) -> ev.NodeLost:
    """``lost`` with the sequence its node's consumer had delivered through, its consumer paused;
    as it is (not known) when the consumer cannot be paused or read (no such consumer, an older
    nats-server, NATS away)."""
    name = subjects.executor_consumer(lost.node)
    until = (datetime.now(UTC) + timedelta(seconds=PAUSE_S)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        pause = await bus.js.pause_consumer(bus.stream, name, until)
    except Exception as err:
        log.info(
            "could not pause a lost node's consumer: its runs are ended as started",
            extra={"node": lost.node, "error": f"{type(err).__name__}: {err}"[:300]},
        )
        return lost
    if not pause.paused:
        return lost
    try:
        remaining = _seconds(pause.pause_remaining)
        if remaining is None or remaining > 3 * PAUSE_S or remaining < PAUSE_S - FRESH_S:
            raise ValueError(f"the server reads the pause as {remaining} s, not {PAUSE_S:g}: clocks apart")
        info = await bus.js.consumer_info(bus.stream, name)
    except Exception as err:
        log.info(
            "could not read a lost node's paused consumer: its runs are ended as started",
            extra={"node": lost.node, "error": f"{type(err).__name__}: {err}"[:300]},
        )
        await resume(bus, lost.node)
        return lost
    if info.delivered is None:
        return lost
    return lost.model_copy(update={"delivered": int(info.delivered.stream_seq)})


def fresh(lost: list[ev.NodeLost], paused_at: float, now: float) -> list[ev.NodeLost]:
    """The NodeLosts as they may be published at ``now`` (monotonic), their consumers paused at
    ``paused_at``: past ``FRESH_S`` they say nothing of what was delivered."""
    if now - paused_at <= FRESH_S:
        return lost
    return [e.model_copy(update={"delivered": None}) if e.delivered is not None else e for e in lost]


def _seconds(remaining: object) -> float | None:
    """nats-server's ``pause_remaining`` (nanoseconds), in seconds; None when it says none."""
    try:
        seconds = float(remaining) / 1e9  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


async def resume(bus: Bus, node: str) -> None:
    try:
        await bus.js.resume_consumer(bus.stream, subjects.executor_consumer(node))
    except Exception as err:  # it resumes by itself after PAUSE_S
        log.warning(
            "could not resume a lost node's consumer; it resumes by itself",
            extra={"node": node, "pause_s": PAUSE_S, "error": f"{type(err).__name__}: {err}"[:300]},
        )
