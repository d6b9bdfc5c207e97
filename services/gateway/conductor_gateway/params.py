"""What a URL's query may hold beyond each parameter's own type: text filters a job can match, and
each parameter once."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator

from conductor_contracts import api

# The parameters that may be repeated: each value adds to the list (``/events?type=A&type=B``;
# ``/metrics?name[]=a&name[]=b``, Prometheus' own filter).
REPEATABLE = frozenset({"type", "name[]"})


def filter_text(value: str | None) -> str | None:
    # Such a value cannot be stored in a read model (NUL is refused by PostgreSQL), so no job has it.
    if value is not None and any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise ValueError("must not contain control characters (no job has them in its name or account)")
    # Stripped as the names and accounts of submits are: " edge " finds the jobs of "edge".
    if value is not None and not (value := value.strip()):
        raise ValueError("is empty once stripped of spaces: no job has an empty name or account")
    return value


Filter = Annotated[
    str | None,
    Query(max_length=api.MAX_LABEL_CHARS, description="exact match; at most 200 characters, no control characters"),
    AfterValidator(filter_text),
]


def once_each(request: Request) -> None:
    """A parameter given twice is refused: FastAPI would take the last, so ``?state=PENDING&state=RUNNING``
    listed only the running jobs, and a proxy or a client that reads the first would act on another."""
    seen: set[str] = set()
    twice: list[str] = []
    for key, _ in request.query_params.multi_items():
        if key in seen and key not in REPEATABLE and key not in twice:
            twice.append(key)
        seen.add(key)
    if twice:
        message = "given more than once: give it once"
        raise RequestValidationError([{"type": "value_error", "loc": ("query", key), "msg": message} for key in twice])


# The hash of the request that used an Idempotency-Key first, kept on the message it stored, so that a
# retry can be told from a reuse of the key.
REQUEST_HASH_HEADER = "Conductor-Request-Hash"

IdempotencyKey = Annotated[
    str | None,
    Header(
        pattern=r"^[\x21-\x7e]{1,255}$",
        description="Makes retries safe: the same key and the same request give the same answer (a job: "
        "within 2 hours; a workflow: while it is in the log); the same key with another request is a 422. "
        "Keys are per account (a job's) or per user (a workflow's). 1 to 255 visible ASCII characters "
        "(a UUID, say).",
    ),
]


def one_idempotency_key(request: Request) -> None:
    """FastAPI would take the first of two: a retry with the second alone would make a second one."""
    if len(request.headers.getlist("idempotency-key")) > 1:
        raise HTTPException(422, "Idempotency-Key is given more than once: send one")
