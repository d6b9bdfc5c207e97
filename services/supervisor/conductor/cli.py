"""The ``conductor`` command: ``up`` runs everything; the others run one service each."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _up(argv: list[str]) -> None:
    from conductor.supervisor import Supervisor, UpOptions, nats_sync_interval

    def sync(value: str) -> str | None:
        try:
            return nats_sync_interval(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    def digits(value: str) -> int:
        # int() takes "٣" for 3, and " 8000" and "8_000" too.
        if not (value.isascii() and value.isdigit()):
            raise argparse.ArgumentTypeError(f"takes a number in digits 0-9, not {value!r}")
        return int(value)

    def gateway_count(value: str) -> int:
        if not value.isdigit() or not 1 <= int(value) <= 64:
            raise argparse.ArgumentTypeError(f"--gateways takes a number from 1 to 64, not {value!r}")
        return int(value)

    parser = argparse.ArgumentParser(prog="conductor up", description="Start the whole system on this machine.")
    parser.add_argument(
        "--var-dir", default=os.environ.get("CONDUCTOR_VAR_DIR", "var"), help="data folder (default ./var)"
    )
    parser.add_argument("--port", type=digits, help="gateway port (default 8000, or CONDUCTOR_PORT)")
    parser.add_argument(
        "--gateways",
        type=gateway_count,
        default=os.environ.get("CONDUCTOR_GATEWAYS", "1"),
        help="gateway processes sharing the port (SO_REUSEPORT; default 1, or CONDUCTOR_GATEWAYS): "
        "one process is about one core's worth of submits",
    )
    parser.add_argument("--node", help="the executor's node name (default: host name)")
    parser.add_argument("--cpus", type=int, help="CPUs the executor offers (default: this machine's)")
    parser.add_argument("--memory", help="memory the executor offers, like 8G (default: this machine's)")
    parser.add_argument(
        "--sync",
        type=sync,
        default=None,
        metavar="always|default|DURATION",
        help="when the embedded nats-server fsyncs the log: 'always' (each event before it is acknowledged: "
        "a power loss loses no accepted submit; fewer submits/s), 'default' (every 2 minutes: a crash of any "
        "process loses nothing, a power loss can lose the last acknowledged events) or a period like 10s",
    )
    args = parser.parse_args(argv)
    executor_args: list[str] = []
    for flag in ("node", "cpus", "memory"):
        value = getattr(args, flag)
        if value is not None:
            executor_args += [f"--{flag}", str(value)]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s conductor up: %(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    options = UpOptions(
        var_dir=Path(args.var_dir).resolve(),
        executor_args=executor_args,
        gateway_port=args.port,
        nats_sync=args.sync,
        gateways=args.gateways,
    )
    sys.exit(Supervisor(options).run())


def _duration(text: str) -> float:
    """Seconds from '90s', '15m', '12h', '7d' or a plain number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    shown = repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"
    try:
        seconds = float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {shown} (like 90s, 15m, 12h, 7d)") from None
    if not 0 <= seconds < 100 * 365 * 86400:
        raise argparse.ArgumentTypeError(f"out of range: {shown}")
    return seconds


def _compact(argv: list[str]) -> None:
    from conductor.compact import CompactionError, run
    from conductor_platform.settings import load_settings
    from conductor_projector.settings import ProjectorSettings

    parser = argparse.ArgumentParser(
        prog="conductor compact",
        description="Move the log's oldest events, those no reader needs any longer, into an archive.",
    )
    # NATS_URL, DATABASE_URL, the archive and whether the public subjects are on
    settings = load_settings(ProjectorSettings, "conductor compact")
    parser.add_argument(
        "--archive",
        default=settings.archive_dir,
        help="folder of the archive's segments (default ./var/archive, or CONDUCTOR_ARCHIVE_DIR); keep it "
        "for as long as the read models may have to be rebuilt",
    )
    parser.add_argument("--keep", type=_duration, default=7 * 86400.0, help="keep events younger than this (7d)")
    args = parser.parse_args(argv)
    # Each failed connection attempt was a line of its own (30 before the one that says NATS is away).
    logging.getLogger("conductor_platform.bus").setLevel(logging.ERROR)
    try:
        done = run(settings.nats_url, settings.database_url, Path(args.archive), args.keep, settings.public_subjects)
    except CompactionError as err:
        print(f"conductor compact: {err}", file=sys.stderr)
        sys.exit(1)
    mark = done.watermark
    if done.segment is None:
        print(f"nothing to compact: the log is kept from {done.first}, held back by {mark.limited_by()}")
    else:
        print(
            f"archived {done.archived} events (sequences {done.first}-{done.below - 1}) to {done.segment}; "
            f"the log now starts at {done.below} (held back by {mark.limited_by()})"
        )
    if not done.purged:
        print(
            "a projector rebuild is reading the log behind the archived part, so nothing was purged from the "
            "stream: run `conductor compact` again once it has caught up"
        )


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("up", "gateway", "scheduler", "executor", "projector", "compact")
    if not argv or argv[0] not in commands:
        print(f"usage: conductor {{{','.join(commands)}}} [options]", file=sys.stderr)
        sys.exit(2)
    command, rest = argv[0], argv[1:]
    if command == "up":
        _up(rest)
    elif command == "compact":
        _compact(rest)
    elif command == "gateway":
        from conductor_gateway.__main__ import main as run

        run(rest)
    elif command == "scheduler":
        from conductor_scheduler.__main__ import main as run

        run(rest)
    elif command == "executor":
        from conductor_executor.__main__ import main as run

        run(rest)
    else:
        from conductor_projector.__main__ import main as run

        run(rest)
