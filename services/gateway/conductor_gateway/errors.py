"""Error answers: what the OpenAPI document says of each, and 422s that never fail to encode."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from asyncpg.exceptions import InterfaceError as PostgresInterfaceError
from asyncpg.exceptions import PostgresError
from fastapi.exceptions import RequestValidationError
from nats.errors import Error as NatsError
from sqlalchemy.exc import SQLAlchemyError

from conductor_contracts import api
from conductor_contracts.text import printable

T = TypeVar("T")

# What NATS or PostgreSQL away, slow or restarting raise (nats-py's timeouts are TimeoutErrors too):
# a 503 (app.unavailable), never a 500.
BACKEND_DOWN: tuple[type[Exception], ...] = (
    NatsError,
    SQLAlchemyError,  # DBAPIError, and a pool that timed out under load
    PostgresError,  # asyncpg's own, when a connection breaks outside a statement
    PostgresInterfaceError,
    TimeoutError,
    OSError,
)


class NothingRecorded(Exception):
    """A backend failed in a look-up that a write waits on: nothing was asked of the log yet."""


async def before_recording(step: Awaitable[T]) -> T:
    """``step``, a look-up a write is decided on (the job exists and has not ended...). Failing there
    is said as such: a timeout on a POST otherwise answers that what was asked may have been
    recorded, which sent a client looking for a cancel that was never published (review of
    2026-12-02: PostgreSQL frozen)."""
    try:
        return await step
    except BACKEND_DOWN as err:
        raise NothingRecorded(f"{type(err).__name__}: {err}") from err


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
