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

    early: list[int] = []

    def _before_the_loop(signum: int, _frame: object) -> None:
        early.append(signum)

    async def _wrapped() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if early:  # Ctrl-C between the imports and the line above: a stop all the same
            stop.set()
        await main(stop)

    # Services' __main__ keep Ctrl-C quiet while they import; from here it is a stop. Not Python's
    # default_int_handler until the loop's own is in place: asyncio.run() then puts its own handler in
    # (it cancels the main task wherever it is and ends in a KeyboardInterrupt traceback), and a Ctrl-C
    # in the few lines before the loop's found it or Python's.
    signal.signal(signal.SIGINT, _before_the_loop)
    try:
        asyncio.run(_wrapped())
    except closed.ConnectionClosedForGood as err:
        closed.exit_for(err)
