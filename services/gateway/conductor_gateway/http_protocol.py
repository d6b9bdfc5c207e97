"""uvicorn's httptools protocol with a bound on a request's head (its request line and headers).

httptools keeps a header line's pieces until the line ends and uvicorn keeps the URL's, with no limit
of their own: one connection sending a 300 MB header grew the gateway by 460 MB (2026-12-02), so a
few could end it. Servers bound the head (nginx ~32 KB, Node 16 KB, uvicorn's h11 protocol 16 KB);
this one answers 431 and closes once a head is over ``MAX_HEAD_BYTES``.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024


class BoundedHeadProtocol(HttpToolsProtocol):
    """Counts the bytes received while a request's head is incomplete. Between requests the next
    bytes are the next head's; a chunk that ends one request and starts another is counted whole
    for the new one (a pipelining client's, over by at most that chunk)."""

    _heading = True
    _head_bytes = 0

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._heading or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self._heading = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._heading, self._head_bytes = True, 0

    def _refuse_head(self) -> None:
        body = json.dumps({"detail": f"request line and headers over the limit of {MAX_HEAD_BYTES} bytes"}).encode()
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
