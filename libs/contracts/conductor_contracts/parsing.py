"""Parsers for the Slurm-style strings users type: memory sizes and time limits.

Pure functions: they raise ``ValueError`` with a message fit to show a user. Every value they return
fits the read model's int32 columns, so one submit can never stop the projector.
"""

from __future__ import annotations

import re

# ASCII only: ``\d`` would take other scripts' digits, which ``int`` reads but no user means.
_MEMORY = re.compile(r"^\s*([0-9]+)\s*([KMGT]?)B?\s*$", re.IGNORECASE | re.ASCII)
_MEMORY_FACTOR_KB = {"K": 1, "": 1024, "M": 1024, "G": 1024**2, "T": 1024**3}

# The read models keep megabytes and seconds in int32 columns; a year is also longer than any batch
# job a site wants to hold resources for.
MAX_MEMORY_MB = 2**31 - 1
MAX_TIME_LIMIT_S = 365 * 24 * 3600

# More digits than any accepted value has (zeros in front aside): refused before ``int`` has to read
# thousands of them.
_MAX_DIGITS = 12

UNLIMITED_WORDS = frozenset({"unlimited", "infinite", "-1"})


def shown(text: str, limit: int = 40) -> str:
    """A user's value quoted in a message: short, and printable whatever it holds (a lone surrogate
    cannot be encoded into a JSON answer)."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return ascii(cut)


def _number(digits: str) -> int | None:
    """The value of ASCII digits, or None when there are too many of them to be any valid size."""
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= _MAX_DIGITS else None


def parse_memory_mb(text: str) -> int:
    """Slurm's ``--mem`` syntax: a number with an optional K/M/G/T suffix; no suffix means megabytes."""
    match = _MEMORY.match(text)
    if match is None:
        raise ValueError(
            f"invalid memory {shown(text)}: use a number with an optional unit K, M, G or T, like '512M' or '8G'"
        )
    number = _number(match.group(1))
    megabytes = None if number is None else number * _MEMORY_FACTOR_KB[match.group(2).upper()] // 1024
    if megabytes is None or megabytes > MAX_MEMORY_MB:
        raise ValueError(f"invalid memory {shown(text)}: at most {MAX_MEMORY_MB}M (just under 2048T)")
    if megabytes < 1:
        raise ValueError(f"invalid memory {shown(text)}: must be at least 1M")
    return megabytes


_TIME_FORMS = "use minutes ('60'), 'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM' or 'D-HH:MM:SS'"


def _ints(parts: list[str], text: str) -> list[int]:
    if not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"invalid time limit {shown(text)}: {_TIME_FORMS}")
    numbers = [_number(p) for p in parts]
    if any(n is None for n in numbers):
        raise ValueError(f"invalid time limit {shown(text)}: at most 365 days")
    return [n for n in numbers if n is not None]


def parse_time_limit_seconds(text: str) -> int | None:
    """Slurm's ``--time`` syntax, in seconds; ``None`` means unlimited.

    Accepted: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
    "days-hours:minutes", "days-hours:minutes:seconds", "UNLIMITED". At most 365 days.
    """
    cleaned = text.strip()
    if cleaned.lower() in UNLIMITED_WORDS:
        return None
    if "-" in cleaned:
        day_text, _, rest = cleaned.partition("-")
        (days,) = _ints([day_text], text)
        parts = _ints(rest.split(":"), text)
        if not 1 <= len(parts) <= 3:
            raise ValueError(f"invalid time limit {shown(text)}: too many ':' fields after the day")
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
            raise ValueError(f"invalid time limit {shown(text)}: too many ':' fields")
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError(f"invalid time limit {shown(text)}: must be more than zero")
    if total > MAX_TIME_LIMIT_S:
        raise ValueError(f"invalid time limit {shown(text)}: at most 365 days (or UNLIMITED)")
    return total
