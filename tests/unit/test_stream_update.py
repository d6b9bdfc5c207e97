"""ensure_stream against a server older than 2.12, which refuses to change a stream's consumer limit
(500, error 10052; none is at hand here, so its answers are played by a stand-in)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError, ServerError

from conductor_contracts import subjects
from conductor_platform.bus import ensure_stream


class _OldServer:
    """A stream made by an earlier version (no consumer limit) on a server that cannot change it."""

    def __init__(self) -> None:
        self.updates: list[StreamConfig] = []

    async def add_stream(self, config: StreamConfig) -> None:
        raise BadRequestError(code=400, err_code=10058, description="stream name already in use")

    async def update_stream(self, config: StreamConfig) -> None:
        self.updates.append(config)
        if config.max_consumers != -1:
            raise ServerError(
                code=500, err_code=10052, description="stream configuration update can not change MaxConsumers"
            )

    async def stream_info(self, name: str) -> Any:
        return SimpleNamespace(config=SimpleNamespace(max_consumers=-1))


async def test_a_server_that_cannot_change_the_consumer_limit_still_gets_the_rest() -> None:
    server = _OldServer()
    await ensure_stream(server)  # type: ignore[arg-type]
    assert [u.max_consumers for u in server.updates] == [subjects.STREAM_SPEC.max_consumers, -1]
    assert server.updates[-1].duplicate_window == subjects.STREAM_SPEC.duplicate_window_s
