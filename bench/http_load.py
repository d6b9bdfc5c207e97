"""A load generator cheap enough to share two cores with what it measures.

aiohttp spent about 3 ms of CPU per submit in the benchmark, three times what the gateway spent
answering it, so the client, not the gateway, bounded intake. This one keeps one HTTP/1.1
keep-alive connection per worker, sends a request encoded once, and reads the answer by its
Content-Length: an answer's cost is a few header lines split, nothing more. Each connection has one
request in flight at a time (no pipelining), as a real client's connection pool does.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


class HttpError(Exception):
    pass


@dataclass
class Answer:
    status: int
    body: bytes


def post_request(host: str, path: str, body: object, headers: dict[str, str] | None = None) -> bytes:
    data = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        return cls(reader, writer)

    async def send(self, request: bytes) -> Answer:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise HttpError(f"answer {status} without a Content-Length: this client reads no other kind")
        return Answer(status, await self.reader.readexactly(length))

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@dataclass
class LoadResult:
    rate: float
    latencies: list[float] = field(default_factory=list)
    job_ids: list[int] = field(default_factory=list)


async def submit_load(url: str, body: object, jobs: int, concurrency: int) -> LoadResult:
    """``jobs`` POST /jobs/submit over ``concurrency`` connections; every answer must be a 200."""
    host = urlsplit(url).netloc
    request = post_request(host, "/jobs/submit", body)
    connections = [await Connection.open(url) for _ in range(concurrency)]
    remaining = iter(range(jobs))
    result = LoadResult(0.0)

    async def worker(connection: Connection) -> None:
        for _ in remaining:
            sent = time.perf_counter()
            answer = await connection.send(request)
            result.latencies.append(time.perf_counter() - sent)
            if answer.status != 200:
                raise HttpError(f"submit answered {answer.status}: {answer.body[:200]!r}")
            result.job_ids.append(int(json.loads(answer.body)["job_id"]))

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in connections))
    finally:
        result.rate = len(result.job_ids) / (time.perf_counter() - start)
        for connection in connections:
            await connection.close()
    return result
