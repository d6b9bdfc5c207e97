"""Run a service's main coroutine until SIGINT/SIGTERM, then let it finish its cycle and stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from conductor_platform import closed


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """A NATS connection closed for good ends the process with one line and ``closed.EXIT_CODE``,
    for its supervisor to start it again (``closed.py``)."""

    async def _wrapped() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    # Services' __main__ keep Ctrl-C quiet while they import; from here it is a stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        asyncio.run(_wrapped())
    except closed.ConnectionClosedForGood as err:
        closed.exit_for(err)
