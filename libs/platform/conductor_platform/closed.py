"""A NATS connection closed for good, and what every service does then: end, for its supervisor
(``conductor up``, Kubernetes) to start it again.

nats-py closes a connection for good when the server answers with -ERR (an authorization violation,
credentials revoked by a configuration reload, a control line or payload past the server's limit)
or when its reconnect attempts run out. It never opens that connection again: every call on it fails
at once, so a service that retries on it retries for ever. A new process connects afresh.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from conductor_platform.bus import Bus

log = logging.getLogger("conductor.nats")

# EX_TEMPFAIL: a temporary failure, worth trying again (a supervisor restarts on any non-zero code).
EXIT_CODE = os.EX_TEMPFAIL


class ConnectionClosedForGood(Exception):
    """nats-py closed the connection and will not open it again (the server answered an error with
    -ERR, or the reconnect attempts ran out): retrying on it would wait for ever, so the process ends
    and its supervisor starts it again."""


class LogReplaced(ConnectionClosedForGood):
    """The log is not the one this process folded: its stream was deleted and made again, or its
    server lost its last writes (restored from an older copy). What the process holds is of events the
    log does not hold: it ends, and its next start reads the log afresh."""


def closed_for_good(bus: Bus | None) -> bool:
    """Is ``bus``'s connection closed, and not by the service itself (``Bus.close``)?"""
    return bus is not None and bus.nc.is_closed and not bus.closing


def why(bus: Bus, err: BaseException | None = None) -> str:
    """What closed it, as nats-py recorded it (``last_error``), else the error met on it."""
    cause = bus.nc.last_error or err
    return f"{type(cause).__name__}: {cause}" if cause is not None else "closed by nats-py"


def raise_if_closed(bus: Bus | None, err: BaseException | None = None) -> None:
    """``ConnectionClosedForGood`` (from ``err``, the failure that led here) when ``bus``'s
    connection is closed for good; nothing otherwise (the failure is worth retrying)."""
    if bus is not None and closed_for_good(bus):
        raise ConnectionClosedForGood(why(bus, err)) from err


async def watch(bus_of: Callable[[], Bus | None], every_s: float = 0.5) -> NoReturn:
    """Raises ``ConnectionClosedForGood`` once the connection of ``bus_of()`` is closed for good:
    for a service that may wait on no NATS call meanwhile (a gateway without requests)."""
    while True:
        raise_if_closed(bus_of())
        await asyncio.sleep(every_s)


def report(err: ConnectionClosedForGood) -> None:
    """The one line that says why the process ends."""
    if isinstance(err, LogReplaced):
        log.critical("%s; exiting for the supervisor to start this service again", err, extra={"exit_code": EXIT_CODE})
        return
    log.error(
        "the NATS connection was closed for good (%s); exiting for the supervisor to start this service again",
        err,
        extra={"exit_code": EXIT_CODE},
    )


def exit_for(err: ConnectionClosedForGood) -> NoReturn:
    """``report``, and the process ends with ``EXIT_CODE``."""
    report(err)
    sys.exit(EXIT_CODE)
