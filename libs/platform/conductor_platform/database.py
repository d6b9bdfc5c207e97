"""The services' PostgreSQL engines, with every wait bounded.

A PostgreSQL that refuses (down, restarting) fails a connection at once. One that hangs (stopped,
swapping, or behind a network that drops packets) left each query waiting for asyncpg's 60 s connect
timeout, or for ever on a connection already open: a gateway answered a query after a minute or
never, and its readiness check with it. Connecting, each statement and the wait for a pooled
connection now end after ``timeout_s`` with a TimeoutError, which the services already treat as
PostgreSQL being unavailable (a 503, or a retry).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conductor_platform.settings import async_database_url


def engine(url: str, *, timeout_s: float, pool_size: int = 5, pre_ping: bool = False) -> AsyncEngine:
    return create_async_engine(
        async_database_url(url),
        pool_size=pool_size,
        pool_pre_ping=pre_ping,
        pool_timeout=timeout_s,
        connect_args={"timeout": timeout_s, "command_timeout": timeout_s},
    )
