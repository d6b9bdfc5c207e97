"""``python -m conductor_projector [--rebuild]``"""

from __future__ import annotations

import signal

# Ctrl-C while the imports below run (about a second) ends the process quietly, not with a
# KeyboardInterrupt traceback; Python's own handler is back before the service starts.
signal.signal(signal.SIGINT, signal.SIG_DFL)

import argparse
import gc

from conductor_platform import logging as logs
from conductor_platform import metrics, tracing
from conductor_platform.runner import run_until_signalled
from conductor_platform.settings import load_settings
from conductor_projector.service import run
from conductor_projector.settings import ProjectorSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="conductor projector", description="Fold the log into the read models.")
    parser.add_argument("--rebuild", action="store_true", help="drop the read models and replay the whole log")
    args = parser.parse_args(argv)
    settings = load_settings(ProjectorSettings, "conductor projector")
    logs.setup("projector", settings.log_level)
    tracing.setup("projector")
    metrics.serve("projector", settings.metrics_port)
    _collect_less()
    run_until_signalled(lambda stop: run(settings, rebuild=args.rebuild, stop=stop))


def _collect_less() -> None:
    """Each event decoded makes a dozen objects, none in a cycle, and drops them a batch later; at
    the collector's default (a young collection every 700 new objects, a full one after 100 of
    those) it spent a third of the CPU of decoding and folding an event, walking the same long-lived
    objects (the job directory of the public subjects, the decoded events kept for the republisher)
    again and again (bench/projector.py --fold-only: 15.7 -> 10.7 us an event). What start-up made
    is never freed: out of its sight too. Cycles are still collected, less often.

    A young collection comes when the objects made and not yet freed reach the first threshold. A
    rebuild keeps about two batches of events alive at once (the one applied, the one read ahead),
    well over 10,000 objects and under 50,000: at 10,000 it collected two hundred times in 500,000
    events, each walking the live batches for nothing (1.26 s of 15.1 s CPU, gc.callbacks; 8%); at
    50,000 it no longer does. Garbage in cycles still goes once 50,000 objects are pending."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)


if __name__ == "__main__":
    main()
