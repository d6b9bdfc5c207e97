"""Bring the read-model schema to Alembic's head; safe to run from several processes at once (they
take turns on an advisory lock, see migrations/env.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_platform.settings import async_database_url
from conductor_projector import tables as t

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


def _in_daemon_thread(database_url: str) -> concurrent.futures.Future[None]:
    """``upgrade`` in a daemon thread: a process asked to stop does not wait for a migration stuck on
    PostgreSQL (one that never answers: asyncpg's 60 s connect timeout; the migration lock held
    elsewhere: for as long as it is held), as it waits for ``asyncio.to_thread``'s pool. The process
    ends, its connection goes, and PostgreSQL rolls the migration's transaction back."""
    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    future.set_running_or_notify_cancel()  # running: a waiter's cancel no longer reaches it

    def run() -> None:
        try:
            upgrade(database_url)
        except BaseException as err:
            future.set_exception(err)
        else:
            future.set_result(None)

    threading.Thread(target=run, name="migrate", daemon=True).start()
    return future


async def upgrade_async(database_url: str) -> None:
    """``upgrade``, awaited; cancelling it leaves the thread to end with the process."""
    await asyncio.wrap_future(_in_daemon_thread(database_url))


def upgrade_unless(database_url: str, stopping: Callable[[], bool]) -> bool:
    """``upgrade`` in a blocking caller that signals may ask to stop: False once ``stopping()``."""
    migrating = _in_daemon_thread(database_url)
    while not stopping():
        try:
            migrating.result(timeout=0.1)
            return True
        except concurrent.futures.TimeoutError:
            continue
    return False


class NewerSchema(Exception):
    """The read models are at a revision this version does not know (a newer one made them): no
    retry mends that, only the newer projector or another database."""


def newer_schema(err: BaseException) -> NewerSchema | None:
    if isinstance(err, CommandError) and "Can't locate revision" in str(err):
        return NewerSchema(
            f"the read models' schema is newer than this projector knows ({err}): run the version that made "
            "it, or point DATABASE_URL at another database"
        )
    return None


# Alembic's record of the schema's revision (its default table name).
_VERSION_TABLE = "alembic_version"


async def missing_tables(engine: AsyncEngine) -> list[str]:
    """The read-model tables the database does not have (dropped by hand, say)."""
    async with engine.connect() as conn:
        found = [
            (table.name, await conn.scalar(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": table.name}))
            for table in t.metadata.sorted_tables
        ]
    return [name for name, there in found if not there]


async def remake(engine: AsyncEngine, database_url: str) -> None:
    """Every read-model table dropped, with Alembic's record of them, and made again from the first
    revision: for a rebuild of read models that miss a table, which a migration at head never adds
    back (Alembic only knows the revision it recorded)."""
    async with engine.begin() as conn:
        for table in [*reversed(t.metadata.sorted_tables)]:
            await conn.execute(text(f'DROP TABLE IF EXISTS "{table.name}" CASCADE'))
        await conn.execute(text(f'DROP TABLE IF EXISTS "{_VERSION_TABLE}"'))
    await upgrade_async(database_url)
