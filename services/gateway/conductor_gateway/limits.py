"""The request body limits, enforced before FastAPI reads a body: its size and how long it may take."""

from __future__ import annotations

import asyncio

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A client that sends a body over the limit whole before it reads the answer (Python's urllib, most
# simple clients) sees a connection reset instead of the 413 if the server answers and closes while
# the body is still coming. Up to this much is read and thrown away first, as servers with a
# lingering close do; beyond it the connection is not worth keeping.
DRAIN_MAX_BYTES = 16 * 1024 * 1024


class BodyLimit:
    """Refuses a request body over ``max_bytes``: by its Content-Length when it has one, else as it
    streams in (a chunked body would otherwise be read whole into memory, however large). A body
    not complete within ``timeout_s`` is a 408: a client that declares a body and trickles it, or
    never sends it, would otherwise hold a connection and its worker for ever."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"request body over the limit of {self.max_bytes} bytes"
        # Leading zeros do not count: 0000...0123 (19 digits and more) is 123, not over the limit.
        length = Headers(scope=scope).get("content-length", "").strip().lstrip("0") or "0"
        # Counted in digits first: int() of thousands of digits raises (a 500), and is slow anyway.
        if length.isascii() and length.isdigit() and (len(length) > 18 or int(length) > self.max_bytes):
            if len(length) <= 18 and int(length) <= DRAIN_MAX_BYTES:
                await self._drain(receive)
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        seen = 0
        complete = False
        loop = asyncio.get_running_loop()
        deadline: float | None = None

        async def counted() -> Message:
            nonlocal seen, complete, deadline
            if complete:  # the body is in: what follows is waiting for a disconnect, for as long as it takes
                return await receive()
            deadline = deadline or loop.time() + self.timeout_s
            try:
                # A timer, not wait_for: on Python 3.11 wait_for wraps every receive in a task of its own.
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, f"request body not received within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise HTTPException(413, detail)  # FastAPI passes it on from its body parsing
            return message

        await self.app(scope, counted, send)

    async def _drain(self, receive: Receive) -> None:
        """Read and drop the body (bounded by the caller and by the timeout) so the answer is read."""
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        return
        except TimeoutError:
            return
