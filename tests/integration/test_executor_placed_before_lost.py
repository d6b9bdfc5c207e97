"""An executor that was away (stopped, frozen) while the scheduler declared its node lost finds
placements stored before that NodeLost when it comes back: runs the scheduler has ended (requeued,
maybe to run elsewhere, or NODE_FAIL). It starts none of them, whether the NodeLost comes in the
same batch as they do or in a later one."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from conductor_contracts import events as ev
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus
from tests.integration.helpers import eventually, read_log
from tests.integration.test_executor import NODE, _has, executor_settings
from tests.integration.test_executor_restart import ExecutorProcess
from tests.unit.scheduling import submitted

CPUS = 4


async def _registered_after(bus: Bus, seq: int) -> bool:
    return any(s > seq and isinstance(e, ev.NodeRegistered) for s, _, e in await read_log(bus))


# 3 placements: the NodeLost comes in their batch; 40: in a later one (a batch is 32 messages).
@pytest.mark.parametrize("placements", [3, 40])
async def test_placements_stored_before_a_node_lost_are_not_started(
    bus: Bus, nats_url: str, tmp_path: Path, placements: int
) -> None:
    settings: ExecutorSettings = executor_settings(nats_url, tmp_path, cpus=CPUS)
    executor = ExecutorProcess(settings, cpus=CPUS)
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        os.kill(executor.process.pid, signal.SIGSTOP)  # frozen: the scheduler declares the node lost
        ids = []
        for i in range(placements):
            job = submitted().model_copy(
                update={"working_directory": str(tmp_path), "script": f"touch {tmp_path}/ran-{i}", "requeue": True}
            )
            ids.append(await bus.publish(job))
        for i, job_id in enumerate(ids):
            placed = ev.JobPlaced(job_id=job_id, node=NODE, cores=(i % CPUS,), memory_mb=10)
            await bus.publish(placed, by_scheduler=True)
        lost = await bus.publish(ev.NodeLost(node=NODE, reason="no heartbeat"), by_scheduler=True)
        os.kill(executor.process.pid, signal.SIGCONT)
        # It registers again once it has handled the NodeLost, after every placement before it.
        await eventually(lambda: _registered_after(bus, lost), what="registered again after the loss")
        assert not list(tmp_path.glob("ran-*")), "a run the scheduler had ended was started"
        assert not [job_id for job_id in ids if (settings.jobs_dir / str(job_id)).exists()]
        assert not await _has(bus, ev.JobStarted)
    finally:
        executor.kill()
