"""``python -m conductor_scheduler``"""

from __future__ import annotations

import signal

# Ctrl-C while the imports below run (about a second) ends the process quietly, not with a
# KeyboardInterrupt traceback; Python's own handler is back before the service starts.
signal.signal(signal.SIGINT, signal.SIG_DFL)

import asyncio

from conductor_platform import logging as logs
from conductor_platform import metrics, tracing
from conductor_platform.runner import run_until_signalled
from conductor_platform.settings import load_settings
from conductor_scheduler import memtrace
from conductor_scheduler.service import run
from conductor_scheduler.settings import SchedulerSettings


def main(argv: list[str] | None = None) -> None:
    memtrace.start()  # a debugging aid, off unless asked for
    settings = load_settings(SchedulerSettings, "conductor scheduler")
    logs.setup("scheduler", settings.log_level)
    tracing.setup("scheduler")
    metrics.serve("scheduler", settings.metrics_port)

    async def _main(stop: asyncio.Event) -> None:
        memtrace.on_signal(asyncio.get_running_loop())
        await run(settings, stop)

    run_until_signalled(_main)


if __name__ == "__main__":
    main()
