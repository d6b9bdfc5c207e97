"""Bring the read-model schema to Alembic's head; safe to run from several processes at once (they
take turns on an advisory lock, see migrations/env.py)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config

from conductor_platform.settings import async_database_url

_HERE = Path(__file__).parent
# Alembic sets its `context` and `op` proxies module-wide for the command that runs: two upgrades in
# threads of one process (two projectors in one process, as tests run them) swap each other's
# ("KeyError: 'config'"). Processes take turns on the database's advisory lock instead.
_ONE_AT_A_TIME = threading.Lock()


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE / "migrations"))
    config.set_main_option("sqlalchemy.url", async_database_url(database_url).replace("%", "%%"))
    return config


def upgrade(database_url: str) -> None:
    """Blocking (Alembic's env runs its own event loop): call it from a thread inside async code."""
    with _ONE_AT_A_TIME:
        command.upgrade(alembic_config(database_url), "head")


class _Upgrade(threading.Thread):
    """``upgrade`` in a daemon thread: a process asked to stop does not wait for a migration stuck on
    PostgreSQL (one that never answers: asyncpg's 60 s connect timeout; the migration lock held
    elsewhere: for as long as it is held), as it waits for ``asyncio.to_thread``'s pool. The process
    ends, its connection goes, and PostgreSQL rolls the migration's transaction back."""

    def __init__(self, database_url: str, on_end: Callable[[], None] = lambda: None) -> None:
        super().__init__(name="migrate", daemon=True)
        self.database_url, self.on_end = database_url, on_end
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            upgrade(self.database_url)
        except BaseException as err:
            self.error = err
        finally:
            self.on_end()


async def upgrade_async(database_url: str) -> None:
    """``upgrade``, awaited; cancelling it leaves the thread to end with the process."""
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()

    def on_end() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(ended.set)

    migrating = _Upgrade(database_url, on_end)
    migrating.start()
    await ended.wait()
    if migrating.error is not None:
        raise migrating.error


def upgrade_unless(database_url: str, stopping: Callable[[], bool]) -> bool:
    """``upgrade`` in a blocking caller that signals may ask to stop: False once ``stopping()``."""
    migrating = _Upgrade(database_url)
    migrating.start()
    while migrating.is_alive():
        if stopping():
            return False
        migrating.join(0.1)
    if migrating.error is not None:
        raise migrating.error
    return True
