"""Strange values in submissions published straight to the stream go through the projector's
direct asyncpg upsert to the read models or to dead letters; the projector never stops."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import subjects
from conductor_platform.bus import Bus
from conductor_projector import tables as t
from conductor_projector.settings import ProjectorSettings
from tests.integration.projecting import projected_to, projector
from tests.unit.scheduling import submitted

MB = 500_000  # well under NATS's payload limit (see test_projector_nats_limits for one near it)
SURROGATE = "\\ud800"  # a lone surrogate, as JSON writes it


def _variants() -> list[tuple[str, dict[str, Any] | str]]:
    base: dict[str, Any] = json.loads(submitted().model_dump_json())

    def w(**changes: Any) -> dict[str, Any]:
        return {**base, **changes}

    no_stderr = {k: v for k, v in base.items() if k != "standard_error"}
    no_env = {k: v for k, v in base.items() if k != "environment"}
    return [
        ("nul name", w(name="a\x00b")),
        ("surrogate name", json.dumps(base).replace('"name": "j"', f'"name": "a{SURROGATE}b"')),
        ("surrogate account", json.dumps(base).replace('"account": "u"', f'"account": "{SURROGATE}"')),
        ("surrogate env", json.dumps(w(environment={"K": "x"})).replace('"K"', f'"{SURROGATE}"')),
        ("memory 2**63", w(memory_mb=2**63)),
        ("memory 2**63-1", w(memory_mb=2**63 - 1)),
        ("memory 2**64", w(memory_mb=2**64)),
        ("memory 10**30", w(memory_mb=10**30)),
        ("memory negative huge", w(memory_mb=-(2**63) - 1)),
        ("cpus 2**63", w(cpus=2**63, cpus_per_task=2**63)),
        ("time 2**70", w(time_limit_s=2**70)),
        ("workflow index 2**63", w(workflow_id="wf", workflow_index=2**63, parent_indices=[2**63])),
        ("script 1MB", w(script="x" * MB)),
        ("name 1MB", w(name="n" * MB)),
        ("account nonascii", w(account="é" * 300)),  # a longer one: test_projector_nats_limits
        ("stderr null", w(standard_error=None)),
        ("stderr missing", no_stderr),
        ("env missing", no_env),
        ("env null", w(environment=None)),
        ("env odd keys", w(environment={"": "x", "a\x00b": "c", "k": "\x00", "é" * 1000: "v", "=": "="})),
        ("env 1MB", w(environment={"BIG": "v" * MB})),
        ("job_type nul", w(job_type="\x00")),
        ("branch 1MB", w(branch_id="b" * MB)),
        ("dependency odd", w(dependency="afterok:" + "9" * 40)),
    ]


async def _job(engine: AsyncEngine, job_id: int) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(t.jobs).where(t.jobs.c.job_id == job_id))).mappings().first()
        return dict(row) if row else None


async def _dead_letters(engine: AsyncEngine) -> set[int]:
    async with engine.connect() as conn:
        return {int(r) for r in (await conn.execute(select(t.dead_letters.c.stream_seq))).scalars()}


@pytest.mark.parametrize("batch_size", [1, 500])
async def test_strange_submissions_are_stored_or_dead_lettered_and_the_projector_goes_on(
    bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str, batch_size: int
) -> None:
    published: dict[int, str] = {}
    for what, body in _variants():
        data = (body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)).encode()
        ack = await bus.js.publish(subjects.SUBMITTED, data, stream=subjects.STREAM)
        published[ack.seq] = what
    last = await bus.publish(submitted())
    settings = ProjectorSettings(nats_url=nats_url, database_url=database_url, batch_size=batch_size)
    async with projector(settings) as task:
        await projected_to(engine, settings, last, timeout=60)
    assert not task.cancelled() and task.exception() is None
    letters = await _dead_letters(engine)
    unaccounted = []
    for seq, what in published.items():
        row = await _job(engine, seq)
        if row is None and seq not in letters:
            unaccounted.append(what)
    assert not unaccounted, f"neither stored nor dead-lettered: {unaccounted}"
    assert await _job(engine, last) is not None
    # JSON null and a missing field stored apart from nothing: the row exists either way.
    by_what = {what: seq for seq, what in published.items()}
    for what in ("stderr null", "stderr missing", "env missing"):
        assert await _job(engine, by_what[what]) is not None or by_what[what] in letters
