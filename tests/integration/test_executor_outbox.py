"""What an executor owes the log while NATS is unreachable is delivered by a later start."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conductor_contracts import events as ev
from conductor_executor.service import run
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus
from conductor_platform.localservers import free_port
from tests.integration.helpers import eventually, read_log

NODE = "outboxnode"


async def test_events_owed_while_nats_was_unreachable_are_delivered_by_the_next_start(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    unreachable = ExecutorSettings(
        nats_url=f"nats://127.0.0.1:{free_port()}", node=NODE, cpus=1, memory="1G", state_dir=tmp_path, retry_max_s=0.1
    )
    (unreachable.jobs_dir / "7").mkdir(parents=True)  # a job its previous executor left unfinished
    stop = asyncio.Event()
    first = asyncio.create_task(run(unreachable, stop))

    async def owed() -> list[str]:
        names = [p.name.split("-", 1)[1] for p in sorted(unreachable.outbox_dir.glob("*.json"))]
        return names if len(names) == 2 else []

    # It starts without NATS: the job's NODE_FAIL and the registration wait on disk, in that order.
    assert await eventually(owed, what="events kept") == ["7-JobFailed.json", "node-NodeRegistered.json"]
    assert not first.done()
    stop.set()
    await first
    assert await owed()

    stop = asyncio.Event()
    second = asyncio.create_task(run(unreachable.model_copy(update={"nats_url": nats_url}), stop))
    try:

        async def delivered() -> list[ev.Event]:
            return [e for _, _, e in await read_log(bus)] if not list(unreachable.outbox_dir.glob("*.json")) else []

        events = await eventually(delivered, what="outbox delivered")
        # Once each (a new start registers again), NODE_FAIL first.
        failed, registered = events[0], events[1]
        assert isinstance(failed, ev.JobFailed) and failed.job_id == 7 and failed.node_fail
        assert isinstance(registered, ev.NodeRegistered) and registered.node == NODE
        assert [type(e) for e in events[2:]] == [ev.NodeRegistered]
        assert (unreachable.jobs_dir / "7" / "done").exists()
    finally:
        stop.set()
        await second
