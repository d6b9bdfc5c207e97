"""uvicorn's httptools protocol with bounds on a request's head (its request line and headers): its
size, and how long it may take to arrive.

httptools keeps a header line's pieces until the line ends and uvicorn keeps the URL's, with no limit
of their own: one connection sending a 300 MB header grew the gateway by 460 MB (2026-12-02), so a
few could end it. Servers bound the head (nginx ~32 KB, Node 16 KB, uvicorn's h11 protocol 16 KB);
this one answers 431 and closes once a head goes on ``MAX_HEAD_BYTES`` past the read it began in.
Nor does uvicorn time a head:
a connection that sends nothing, or a byte of a header now and then, was held for ever (a slowloris;
each held a descriptor of the gateway's). A head not complete within the body's time limit, from the
connection's start or from its first byte, is a 408, as a body is (``limits.BodyLimit``).
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024


class BoundedHeadProtocol(HttpToolsProtocol):
    """Counts the bytes of the reads that continue a head begun before them and do not complete it,
    and times the head from the connection's start or the next request's first bytes.

    The read a head begins in is not counted: where in it the head begins is not known (it may end
    the body of the request before), and counting it whole refused a kept-alive client's next request
    after a large body, and with it the answer to that body's submit, which was stored (review of
    2026-12-02). So a head is refused past ``MAX_HEAD_BYTES`` beyond its first read, at most 256 KiB
    (the transport's read size): bounded all the same, and a head that comes whole in one read is not
    refused whatever its size."""

    head_timeout_s = 30.0
    _in_head = False
    _heads = 0  # heads begun on this connection
    _head_bytes = 0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._time_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._untime_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        head = self._heads if self._in_head else None
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        if head == self._heads:  # all of it is the head's: it began before this read and has not ended
            self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(431, "Request Header Fields Too Large", f"over the limit of {MAX_HEAD_BYTES} bytes")
        elif self._head_timer is None:
            # Not the connection's first request: timed from the chunk it began in. Only a head that
            # did not come whole: a timer per request would cost every request.
            self._time_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        self._heads += 1

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._untime_head()
        super().on_headers_complete()

    def _time_head(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)

    def _untime_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._responding():
            self._time_head()  # the next request's head came during a response: it waits a while more
            return
        self._refuse(408, "Request Timeout", f"not received within {self.head_timeout_s:g} s")

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse(self, status: int, phrase: str, why: str) -> None:
        self._untime_head()
        if self._responding():  # an answer now would land inside the response being sent
            self.transport.close()
            return
        body = json.dumps({"detail": f"request line and headers {why}"}).encode()
        head = [f"HTTP/1.1 {status} {phrase}\r\n".encode()]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def bounded_head(head_timeout_s: float) -> type[BoundedHeadProtocol]:
    """The protocol for uvicorn's ``http`` setting, its heads timed out after ``head_timeout_s``."""

    class Timed(BoundedHeadProtocol):
        pass

    Timed.head_timeout_s = head_timeout_s
    return Timed
