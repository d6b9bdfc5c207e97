"""Error answers: what the OpenAPI document says of each, and 422s that never fail to encode."""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError

from conductor_contracts import api


def documented(*codes: int) -> dict[int | str, dict[str, object]]:
    meaning = {
        404: "no such job",
        409: "the job is in a state that does not allow this",
        413: "the script or the request is over the size limit",
        503: "NATS or PostgreSQL is unavailable; retry",
    }
    return {code: {"model": api.ErrorBody, "description": meaning[code]} for code in codes}


def _safe(value: object, limit: int) -> str:
    """Text that can always be put in a JSON answer: lone surrogates escaped, long values cut."""
    text = str(value).encode("utf-8", "backslashreplace").decode()
    return text if len(text) <= limit else text[:limit] + "..."


def validation_errors(err: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's list of field errors without the input it echoes: the input is what was wrong, so it
    may be what cannot be encoded (a lone surrogate, infinity, JSON nested a thousand deep)."""
    return [
        {
            "type": _safe(e.get("type", ""), 100),
            "loc": [part if isinstance(part, int) else _safe(part, 100) for part in e.get("loc", ())],
            "msg": _safe(e.get("msg", ""), 1000),
        }
        for e in err.errors()[:100]
    ]
