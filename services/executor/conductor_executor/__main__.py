"""``python -m conductor_executor [--node NAME] [--cpus N] [--memory 8G] [--partitions a,b]``"""

from __future__ import annotations

import signal

# Ctrl-C while the imports below run (about a second) ends the process quietly, not with a
# KeyboardInterrupt traceback; Python's own handler is back before the service starts.
signal.signal(signal.SIGINT, signal.SIG_DFL)

import argparse
import asyncio

from conductor_executor.service import run
from conductor_executor.settings import ExecutorSettings, refuse_unusable_state
from conductor_platform import logging as logs
from conductor_platform import metrics, tracing
from conductor_platform.runner import run_until_signalled
from conductor_platform.settings import load_settings


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

    async def _main(stop: asyncio.Event) -> None:
        await run(settings, stop)

    run_until_signalled(_main)


if __name__ == "__main__":
    main()
