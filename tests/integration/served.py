"""The gateway served over real HTTP (uvicorn, in the test's event loop), and a reader of its
Server-Sent Events: ASGITransport hands a streamed body over only once it is complete."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from conductor_gateway.app import create_app
from conductor_gateway.settings import GatewaySettings
from conductor_platform.localservers import free_port


@contextlib.asynccontextmanager
async def served_gateway(settings: GatewaySettings) -> AsyncIterator[str]:
    """The gateway's base URL while it runs."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass(frozen=True)
class Sse:
    """One message of the stream: an event (id, event, data) or a comment."""

    id: int | None = None
    event: str | None = None
    data: dict[str, Any] | None = None
    comment: str | None = None


async def messages(response: httpx.Response) -> AsyncIterator[Sse]:
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield Sse(comment=line[1:].strip())
        elif line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        elif fields:
            yield Sse(
                id=int(fields["id"]) if "id" in fields else None,
                event=fields.get("event"),
                data=json.loads(fields["data"]) if "data" in fields else None,
            )
            fields = {}


async def take(stream: AsyncIterator[Sse], count: int, timeout: float = 20) -> list[Sse]:
    """The next ``count`` events (comments and keepalives' ids skipped)."""

    async def collect() -> list[Sse]:
        got: list[Sse] = []
        async for message in stream:
            if message.event is not None:
                got.append(message)
                if len(got) == count:
                    break
        return got

    return await asyncio.wait_for(collect(), timeout)
