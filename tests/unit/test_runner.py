"""``run_until_signalled``: a Ctrl-C that lands before the event loop's own handler is a stop like
any other, never a KeyboardInterrupt traceback (CI saw one from the scheduler once in ~1,400 runs)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Each raises SIGINT at one point of the start, in the service's own process: as the loop is made
# (before asyncio.run would put its handler in) and as the main task makes its stop event (before
# the loop's handlers are added).
_WHEN = {
    "loop": """
        import asyncio.events
        made = asyncio.events.new_event_loop
        def new_event_loop():
            loop = made()
            signal.raise_signal(signal.SIGINT)
            return loop
        asyncio.events.new_event_loop = new_event_loop
    """,
    "task": """
        class Event(asyncio.Event):
            def __init__(self) -> None:
                super().__init__()
                signal.raise_signal(signal.SIGINT)
        asyncio.Event = Event
    """,
}


_HEAD = """
import asyncio
import signal
from conductor_platform.runner import run_until_signalled
"""

_TAIL = """
async def main(stop: asyncio.Event) -> None:
    await asyncio.wait_for(stop.wait(), 30)
    print("stopped")

signal.signal(signal.SIGINT, signal.SIG_DFL)  # as the services' __main__ do while they import
run_until_signalled(main)
"""


@pytest.mark.parametrize("when", sorted(_WHEN))
def test_a_ctrl_c_before_the_loops_handler_is_a_quiet_stop(when: str) -> None:
    script = _HEAD + textwrap.dedent(_WHEN[when]) + _TAIL
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "stopped\n", "")
