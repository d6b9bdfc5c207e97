"""Pacing for retries against NATS, and which errors are NATS being away rather than a bad message."""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
import nats.js.errors


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
