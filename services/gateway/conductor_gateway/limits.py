"""The request body limit, enforced before FastAPI reads a body."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Refuses a request body over ``max_bytes``: by its Content-Length when it has one, else as it
    streams in (a chunked body would otherwise be read whole into memory, however large)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        detail = f"request body over the limit of {self.max_bytes} bytes"
        length = Headers(scope=scope).get("content-length", "").strip()
        # Counted in digits first: int() of thousands of digits raises (a 500), and is slow anyway.
        if length.isascii() and length.isdigit() and (len(length) > 18 or int(length) > self.max_bytes):
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, detail)  # FastAPI passes it on from its body parsing
            return message

        await self.app(scope, counted, send)
