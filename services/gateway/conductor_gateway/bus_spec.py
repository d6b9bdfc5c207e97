"""GET /asyncapi.json: the AsyncAPI document of the bus, next to FastAPI's /openapi.json."""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter

from conductor_contracts import asyncapi
from conductor_gateway.settings import GatewaySettings


def nats_server(url: str) -> str:
    """host:port of the first server of NATS_URL, without the credentials it may carry."""
    first = urlsplit(url.split(",")[0].strip())
    return f"{first.hostname or 'localhost'}:{first.port or 4222}"


def router(settings: GatewaySettings) -> APIRouter:
    api = APIRouter()
    # Built once: it depends only on the contracts and the settings.
    document = functools.cache(lambda: asyncapi.document(nats_server(settings.nats_url)))

    @api.get("/asyncapi.json", summary="AsyncAPI 3.0 document of the event bus (stream, subjects, event schemas)")
    def asyncapi_json() -> dict[str, Any]:
        return document()

    return api
