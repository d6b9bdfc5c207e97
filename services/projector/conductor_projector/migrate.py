"""Bring the read-model schema to Alembic's head; safe to run from several processes at once (they
take turns on an advisory lock, see migrations/env.py)."""

from __future__ import annotations

import threading
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
