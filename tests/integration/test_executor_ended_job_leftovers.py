"""A job that ends by itself leaves nothing running either: its supervisor kills the job's group, and
what left the group (a ``setsid`` daemon, a child that made a group of its own) is found by its mark,
or in the session of a marked one, at the executor's next look (``leftovers.sweep_ended``), as Slurm
ends a job's every process at its end. Its outcome stays what the job's exit said."""

from __future__ import annotations

import sys
from pathlib import Path

from conductor_contracts import events as ev
from conductor_platform.bus import Bus
from tests.integration.executor_jobs import kill_all_in, processes_in
from tests.integration.helpers import eventually
from tests.integration.test_executor import NODE, _outcome, executor_settings, running
from tests.unit.scheduling import submitted

# Daemons: one that leaves the job's group and session; one that leaves only the group, with its mark;
# and one that leaves the group with a clean environment (no mark), found as a member of the marked
# one's session. Then the job ends, exit 0. (Alone in the job's session, the last would escape: the
# session's id may be another's by the time of the look, see ``leftovers.kill_left_by_ended``.)
_GROUP_OF_ITS_OWN = "import os, sys, time; os.setpgid(0, 0); open(sys.argv[1], 'w'); time.sleep(312)"
DAEMONS = (
    "setsid sleep 311 &\n"
    f'{sys.executable} -c "{_GROUP_OF_ITS_OWN}" marked &\n'
    f'env -i {sys.executable} -c "{_GROUP_OF_ITS_OWN}" unmarked &\n'
    "until [ -e marked ] && [ -e unmarked ]; do sleep 0.05; done\n"
)


async def _placed(bus: Bus, work: Path, script: str, core: int) -> int:
    job = submitted().model_copy(update={"working_directory": str(work), "script": script, "name": "dj"})
    job_id = await bus.publish(job)
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(core,), memory_mb=100), by_scheduler=True)
    return job_id


async def test_what_a_job_that_ended_by_itself_left_running_is_killed(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    settings = executor_settings(nats_url, tmp_path, leftover_scan_s=0.1)
    try:
        async with running(bus, settings):
            # Another job's daemon, whose job still runs: not touched.
            running_job = await _placed(bus, elsewhere, "setsid sleep 313 &\nsleep 60\n", 1)

            async def both_running() -> bool:
                return len(processes_in(elsewhere)) >= 2

            await eventually(both_running, what="the running job and its daemon")
            job_id = await _placed(bus, work, DAEMONS, 0)
            outcome = await _outcome(bus, job_id)
            assert isinstance(outcome, ev.JobCompleted) and outcome.exit_code == 0

            async def left_alone() -> bool:
                return not processes_in(work)

            assert (work / "marked").exists() and (work / "unmarked").exists()
            await eventually(left_alone, timeout=10, what="the ended job's daemons killed")
            assert len(processes_in(elsewhere)) >= 2, "a running job's processes were killed"
            assert running_job
    finally:
        kill_all_in(work)
        kill_all_in(elsewhere)
