"""``python -m conductor_projector [--rebuild]``"""

from __future__ import annotations

import argparse

from conductor_platform import logging as logs
from conductor_platform import metrics, tracing
from conductor_platform.runner import run_until_signalled
from conductor_projector.service import run
from conductor_projector.settings import ProjectorSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="conductor projector", description="Fold the log into the read models.")
    parser.add_argument("--rebuild", action="store_true", help="drop the read models and replay the whole log")
    args = parser.parse_args(argv)
    settings = ProjectorSettings()
    logs.setup("projector", settings.log_level)
    tracing.setup("projector")
    metrics.serve("projector", settings.metrics_port)
    run_until_signalled(lambda stop: run(settings, rebuild=args.rebuild, stop=stop))


if __name__ == "__main__":
    main()
