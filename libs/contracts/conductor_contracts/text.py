"""Text that can always be encoded: in a JSON answer, an event, a log line or a PostgreSQL column."""

from __future__ import annotations


def printable(value: object, limit: int) -> str:
    """``value`` as text, invalid UTF-8, lone surrogates and NUL as escapes, cut to ``limit``
    characters. For what a user or another writer sent, echoed back in a message: the thing that was
    wrong may be what cannot be encoded."""
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    text = text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
