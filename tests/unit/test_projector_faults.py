"""Whose fault an error is decides what the projector does with it: the event's (stored altered or
dead-lettered), the servers' (wait and retry) or neither (retry loudly, skip nothing). The shapes
here are those SQLAlchemy 2 and asyncpg raise (checked against a real PostgreSQL)."""

from __future__ import annotations

import asyncpg
import pytest
from nats.errors import ConnectionClosedError
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import exc as sa_exc

from conductor_projector.faults import EventError, Fault, classify


def _caused(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


def _dbapi(inner: BaseException, *, invalidated: bool = False) -> sa_exc.DBAPIError:
    class Adapted(Exception):  # SQLAlchemy's asyncpg adapter error: copies the SQLSTATE
        sqlstate = getattr(inner, "sqlstate", None)

    adapted = Adapted(str(inner))
    adapted.__cause__ = inner
    err = sa_exc.DBAPIError("INSERT ...", {}, adapted, connection_invalidated=invalidated)
    err.__cause__ = adapted
    return err


UNENCODABLE = UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")


def _validation_error() -> ValidationError:
    try:
        TypeAdapter(int).validate_json(b"garbage")
    except ValidationError as err:
        return err
    raise AssertionError("garbage validated")


@pytest.mark.parametrize(
    ("err", "fault"),
    [
        (_dbapi(asyncpg.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00')), Fault.DATA),
        (_dbapi(_caused(asyncpg.DataError("value out of int32 range"), OverflowError())), Fault.DATA),
        (_dbapi(asyncpg.ProgramLimitExceededError("index row size 8016 exceeds maximum 2704")), Fault.DATA),
        (_dbapi(asyncpg.UniqueViolationError("duplicate key")), Fault.DATA),
        (_validation_error(), Fault.DATA),
        (EventError("pid out of range"), Fault.DATA),
        (
            sa_exc.StatementError("bind failed", "INSERT ...", {}, UnicodeEncodeError("utf-8", "", 0, 1, "x")),
            Fault.DATA,
        ),
        (_dbapi(asyncpg.ConnectionDoesNotExistError("connection was closed"), invalidated=True), Fault.TRANSIENT),
        (_dbapi(asyncpg.AdminShutdownError("terminating connection")), Fault.TRANSIENT),
        (_dbapi(asyncpg.CannotConnectNowError("the database system is starting up")), Fault.TRANSIENT),
        (_dbapi(asyncpg.DeadlockDetectedError("deadlock detected")), Fault.TRANSIENT),
        (ConnectionRefusedError(111, "Connect call failed"), Fault.TRANSIENT),
        (TimeoutError(), Fault.TRANSIENT),
        (ConnectionClosedError(), Fault.TRANSIENT),
        # Not the event's: a schema out of step with the code must not dead-letter the whole log.
        (_dbapi(asyncpg.UndefinedColumnError('column "message" does not exist')), Fault.OTHER),
        (RuntimeError("a bug"), Fault.OTHER),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_classify(err: BaseException, fault: Fault) -> None:
    assert classify(err) is fault
