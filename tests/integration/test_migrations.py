"""Migrations on the real PostgreSQL: several processes may start at once (projector replicas,
`conductor up` and its projector), so upgrading must be safe when they run concurrently."""

from __future__ import annotations

import asyncio
import sys
from asyncio.subprocess import PIPE

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

UPGRADE = "import sys; from conductor_projector import migrate; migrate.upgrade(sys.argv[1])"
HEAD = "0009"


async def test_concurrent_upgrades_from_an_empty_database(engine: AsyncEngine, database_url: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    # Separate processes, as in production (Alembic's context is global to a process).
    upgrades = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", UPGRADE, database_url, stderr=PIPE) for _ in range(6)
    ]
    results = [await p.communicate() for p in upgrades]
    assert [err.decode() for p, (_, err) in zip(upgrades, results, strict=True) if p.returncode != 0] == []
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT version_num FROM alembic_version")) == HEAD
        assert await conn.scalar(text("SELECT count(*) FROM nodes")) == 0


async def test_concurrent_upgrades_in_threads_of_one_process(engine: AsyncEngine, database_url: str) -> None:
    # Two projectors in one process (tests run them so) migrate from threads: Alembic's module-wide
    # context must not be swapped between them.
    from conductor_projector import migrate

    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    results = await asyncio.gather(
        *(asyncio.to_thread(migrate.upgrade, database_url) for _ in range(6)), return_exceptions=True
    )
    assert [repr(r) for r in results if r is not None] == []
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT version_num FROM alembic_version")) == HEAD


async def test_nodes_drained_before_the_drain_column_keep_their_drain(engine: AsyncEngine, database_url: str) -> None:
    from alembic import command

    from conductor_projector import migrate

    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await asyncio.to_thread(command.upgrade, migrate.alembic_config(database_url), "0007")
    async with engine.begin() as conn:
        for name, state, reason in (("a", "DRAIN", "disk"), ("b", "DRAIN", None), ("c", "UP", None)):
            await conn.execute(
                text(
                    "INSERT INTO nodes (name, cpus, memory_mb, partitions, state, registered_at, reason)"
                    " VALUES (:name, 1, 1, '[]', :state, now(), :reason)"
                ),
                {"name": name, "state": state, "reason": reason},
            )
    await asyncio.to_thread(migrate.upgrade, database_url)
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT name, drain FROM nodes ORDER BY name"))).all()
    assert [tuple(row) for row in rows] == [("a", "disk"), ("b", ""), ("c", None)]
