"""Parsers for the Slurm-style strings users type: memory sizes and time limits.

Pure functions: they raise ``ValueError`` with a message fit to show a user.
"""

from __future__ import annotations

import re

_MEMORY = re.compile(r"^\s*(\d+)\s*([KMGT]?)B?\s*$", re.IGNORECASE)
_MEMORY_FACTOR_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}

UNLIMITED_WORDS = frozenset({"unlimited", "infinite", "-1"})


def parse_memory_mb(text: str) -> int:
    """Slurm's ``--mem`` syntax: a number with an optional K/M/G/T suffix; no suffix means megabytes."""
    match = _MEMORY.match(text)
    if match is None:
        raise ValueError(
            f"invalid memory {text!r}: use a number with an optional unit K, M, G or T, like '512M' or '8G'"
        )
    number, unit = int(match.group(1)), match.group(2).upper()
    megabytes = number * _MEMORY_FACTOR_MB[unit]
    if megabytes < 1:
        raise ValueError(f"invalid memory {text!r}: must be at least 1M")
    return int(megabytes)


def _ints(parts: list[str], text: str) -> list[int]:
    if not all(p.isdigit() for p in parts):
        raise ValueError(
            f"invalid time limit {text!r}: use minutes ('60'), 'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM' or 'D-HH:MM:SS'"
        )
    return [int(p) for p in parts]


def parse_time_limit_seconds(text: str) -> int | None:
    """Slurm's ``--time`` syntax, in seconds; ``None`` means unlimited.

    Accepted: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
    "days-hours:minutes", "days-hours:minutes:seconds", "UNLIMITED".
    """
    cleaned = text.strip()
    if cleaned.lower() in UNLIMITED_WORDS:
        return None
    if "-" in cleaned:
        day_text, _, rest = cleaned.partition("-")
        (days,) = _ints([day_text], text)
        parts = _ints(rest.split(":"), text)
        if not 1 <= len(parts) <= 3:
            raise ValueError(f"invalid time limit {text!r}: too many ':' fields after the day")
        hours, minutes, seconds = ([*parts, 0, 0])[:3]
    else:
        parts = _ints(cleaned.split(":"), text)
        if len(parts) == 1:
            days, hours, minutes, seconds = 0, 0, parts[0], 0
        elif len(parts) == 2:
            days, hours, minutes, seconds = 0, 0, parts[0], parts[1]
        elif len(parts) == 3:
            days, (hours, minutes, seconds) = 0, parts
        else:
            raise ValueError(f"invalid time limit {text!r}: too many ':' fields")
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError(f"invalid time limit {text!r}: must be more than zero")
    return total
