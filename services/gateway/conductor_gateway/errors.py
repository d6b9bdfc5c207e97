"""Error answers: what the OpenAPI document says of each, and 422s that never fail to encode."""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError

from conductor_contracts import api
from conductor_contracts.text import printable


def documented(*codes: int) -> dict[int | str, dict[str, object]]:
    meaning = {
        404: "not found (no such job, user or workflow)",
        409: "a conflict: the job's state does not allow this, the user exists already, or the feed's "
        "position is past the end of the log",
        413: "the script or the request is over the size limit",
        503: "NATS or PostgreSQL is unavailable; retry",
    }
    return {code: {"model": api.ErrorBody, "description": meaning[code]} for code in codes}


def validation_errors(err: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's list of field errors without the input it echoes: the input is what was wrong, so it
    may be what cannot be encoded (a lone surrogate, infinity, JSON nested a thousand deep)."""
    return [
        {
            "type": printable(e.get("type", ""), 100),
            "loc": [part if isinstance(part, int) else printable(part, 100) for part in e.get("loc", ())],
            "msg": printable(e.get("msg", ""), 1000),
        }
        for e in err.errors()[:100]
    ]


def digits(value: object) -> object:
    """A number of the URL as a client writes a job id or a position: ASCII digits only (a minus sign
    is left to the bounds to refuse). Parsed as a Python int, ``1_0`` was job 10 and ``+2``, `` 2``
    and ``2.0`` job 2."""
    if isinstance(value, str) and not ((number := value.removeprefix("-")).isascii() and number.isdigit()):
        raise ValueError("must be a number written in digits 0-9 alone")
    return value
