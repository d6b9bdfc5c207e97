"""``python -m conductor_executor [--node NAME] [--cpus N] [--memory 8G] [--partitions a,b]``"""

from __future__ import annotations

import signal

# Ctrl-C while the imports below run (about a second) ends the process quietly, not with a
# KeyboardInterrupt traceback; Python's own handler is back before the service starts.
signal.signal(signal.SIGINT, signal.SIG_DFL)

import argparse
import asyncio
import errno
import os
import sys
import tempfile

from conductor_executor.service import run
from conductor_executor.settings import ExecutorSettings
from conductor_executor.twins import TwinExecutor
from conductor_platform import logging as logs
from conductor_platform import metrics, tracing
from conductor_platform.runner import run_until_signalled
from conductor_platform.settings import EXIT_BAD_SETTING, load_settings

# A full or failing disk passes (the executor retries its writes while it runs); anything else at start
# (no such folder possible, not a folder, read-only, not ours) is a setting that does not hold.
_PASSING = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM})


def refuse_unusable_state(settings: ExecutorSettings) -> None:
    """End the start (``EXIT_BAD_SETTING``, one line) when the state folder cannot hold the jobs'
    folders and the outbox: an executor that cannot write them would register nothing and retry for
    ever, and ``conductor up`` would restart it for ever."""
    try:
        for folder in (settings.jobs_dir, settings.outbox_dir):
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".writable.")
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        if err.errno in _PASSING:
            return
        where = err.filename or settings.state_dir
        print(f"conductor executor: CONDUCTOR_STATE_DIR {settings.state_dir}: {where}: {err.strerror}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTING)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="conductor executor", description="Run the jobs placed on one node.")
    parser.add_argument("--node", help="node name (default: the host name)")
    parser.add_argument("--cpus", type=int, help="CPUs offered (default: this machine's)")
    parser.add_argument("--memory", help="memory offered, like 8G (default: this machine's)")
    parser.add_argument("--partitions", help="comma-separated partitions (default: default)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    if "partitions" in overrides:
        overrides["partitions"] = [p.strip() for p in overrides["partitions"].split(",") if p.strip()]
    settings = load_settings(ExecutorSettings, "conductor executor", **overrides)
    refuse_unusable_state(settings)
    logs.setup("executor", settings.log_level)
    tracing.setup("executor")
    metrics.serve("executor", settings.metrics_port)

    refused: list[str] = []

    async def _main(stop: asyncio.Event) -> None:
        try:
            await run(settings, stop)
        except TwinExecutor as err:
            refused.append(str(err))

    run_until_signalled(_main)
    if refused:
        # Not a setting that does not hold (78 stopped all of `conductor up`): the other executor may
        # be one on its way out, and a supervisor tries again later (EX_TEMPFAIL).
        print(f"conductor executor: node {settings.node}: {refused[0]}", file=sys.stderr)
        sys.exit(os.EX_TEMPFAIL)


if __name__ == "__main__":
    main()
