"""Pacing for retries against NATS, and which errors are NATS being away rather than a bad message."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import nats.errors
import nats.js.errors

from conductor_platform.closed import raise_if_closed
from conductor_platform.tasks import cancel_until_done

if TYPE_CHECKING:
    from conductor_platform.bus import Bus

T = TypeVar("T")
log = logging.getLogger("conductor.retry")  # the service is named by the process it runs in


class Backoff:
    """Doubling delays from ``low_s`` up to ``high_s``; ``reset`` after a success. Every service's
    retries against NATS and PostgreSQL are paced by one (``CONDUCTOR_RETRY_FIRST_S`` / ``_MAX_S``)."""

    def __init__(self, low_s: float, high_s: float) -> None:
        self.low_s, self.high_s = low_s, max(low_s, high_s)
        self.failures = 0

    @property
    def next_s(self) -> float:
        """The delay ``next`` will give."""
        return float(min(self.high_s, self.low_s * 2 ** min(self.failures, 30)))

    def next(self) -> float:
        delay = self.next_s
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0

    async def wait(self, stop: asyncio.Event) -> None:
        """The next delay, cut short when ``stop`` is set."""
        await pause(stop, self.next())


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


# The server or JetStream is unreachable, restarting or not answering: trying again later will do.
_TRANSIENT = (
    TimeoutError,  # nats.errors.TimeoutError is one too
    ConnectionError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
)


def transient(err: BaseException) -> bool:
    return isinstance(err, _TRANSIENT)


class Stopped(Exception):
    """``stop`` was set before the awaited step ended (``or_stop``)."""


async def or_stop(step: Awaitable[T], stop: asyncio.Event) -> T:
    """``step``'s result, or ``Stopped`` as soon as ``stop`` is set first (``step`` is cancelled).
    nats-py tries a first connection for ever while the server is away: a service that awaited it
    as it is ignored SIGTERM until it was killed."""
    trying = asyncio.ensure_future(step)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({trying, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not trying.done():
            # Again until it ends: nats-py's connect may drop one cancel and try for ever (tasks.py).
            with contextlib.suppress(Exception):  # what it failed with no longer matters: we stop
                await cancel_until_done(trying)
    if trying.cancelled() and stop.is_set():
        raise Stopped
    return trying.result()  # a step cancelled by someone else raises CancelledError, as awaited directly


async def retrying(
    what: str, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event, backoff: Backoff, bus: Bus | None = None
) -> T | None:
    """``attempt()`` until it succeeds (its result) or ``stop`` is set (None). ``bus``: the connection
    the attempts use; once nats-py has closed it for good, ``ConnectionClosedForGood`` is raised
    rather than trying again on it for ever."""
    while not stop.is_set():
        try:
            return await or_stop(attempt(), stop)
        except Stopped:
            return None
        except Exception as err:
            raise_if_closed(bus, err)
            delay = backoff.next()
            log.warning(
                f"{what} failed; retrying", extra={"error": f"{type(err).__name__}: {err}"[:300], "retry_in_s": delay}
            )
            await pause(stop, delay)
    return None
