"""Whose fault an exception is: the event's (record it and skip it), the servers' (wait and try
again), or neither (a bug or a schema out of step: wait and try again, loudly, and skip nothing).

A projector that skipped events on an error it does not understand could skip the whole log because
of one bad deployment; one that never skipped could be stopped by a single event. So only errors
known to come from an event's content are the event's fault.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

from pydantic import ValidationError
from sqlalchemy import exc as sa_exc


class Fault(enum.Enum):
    DATA = "data"
    TRANSIENT = "transient"
    OTHER = "other"


class EventError(Exception):
    """Turning an event into operations failed: pure code on one event, so the event's content."""


# SQLSTATE classes (the first two characters). 22 data exception (NUL, out of range, bad encoding),
# 23 integrity constraint, 54 program limit exceeded (an index entry over its maximum size).
_DATA_CLASSES = frozenset({"22", "23", "54"})
# 08 connection exception, 40 transaction rollback (deadlock, serialization), 53 insufficient resources,
# 55 object not in prerequisite state (lock not available), 57 operator intervention (shutdown,
# starting up), 58 system error (I/O).
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})

_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    OSError,  # connection refused or reset; also ConnectionError
    TimeoutError,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)
_DATA_TYPES: tuple[type[BaseException], ...] = (
    EventError,
    ValidationError,
    UnicodeError,
    OverflowError,
    ValueError,
    TypeError,
)


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None, current.__cause__, current.__context__]


def _nats_error(err: BaseException) -> bool:
    return type(err).__module__.startswith("nats.")


def classify(err: BaseException) -> Fault:
    chain = list(_chain(err))
    for link in chain:
        if isinstance(link, sa_exc.DBAPIError) and link.connection_invalidated:
            return Fault.TRANSIENT
        state = getattr(link, "sqlstate", None)
        if isinstance(state, str) and len(state) == 5:
            if state[:2] in _DATA_CLASSES:
                return Fault.DATA
            if state[:2] in _TRANSIENT_CLASSES:
                return Fault.TRANSIENT
            return Fault.OTHER  # a syntax or schema error: ours, not the event's
    if any(isinstance(link, _TRANSIENT_TYPES) or _nats_error(link) for link in chain):
        return Fault.TRANSIENT
    if any(isinstance(link, _DATA_TYPES) for link in chain):
        return Fault.DATA
    # A parameter SQLAlchemy could not even send is the event's; anything else that reached the
    # driver is not known to be.
    if isinstance(err, sa_exc.StatementError) and not isinstance(err, sa_exc.DBAPIError):
        return Fault.DATA
    return Fault.OTHER
