"""Chaos: the executor's nats-server is SIGKILLed while jobs run, and comes back on the same port and
store. Jobs keep running, outcomes wait on disk for as long as NATS is away (through executor
restarts too) and reach the log exactly once when it is back.

Part of the outage is a server without JetStream on the same port: requests then fail at once ("no
responders"), which is what once ended the executor's loop and spent its 30 tries to report in
seconds (issue 5)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.errors import Error as NatsError

from conductor_contracts import events as ev
from conductor_executor.service import run
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus, connect
from conductor_platform.localservers import LocalServer, free_port, start_nats, wait_for_port
from tests.integration.helpers import eventually, fast_executor, read_log, starts
from tests.unit.scheduling import submitted

pytestmark = pytest.mark.chaos

NODE = "outage"


@dataclass
class Nats:
    folder: Path
    port: int
    server: LocalServer

    def kill(self) -> None:
        self.server.process.kill()
        self.server.process.wait()

    def restart(self) -> None:
        self.server = start_nats(self.folder, self.port)

    def without_jetstream(self) -> None:
        binary = str(Path(sys.executable).parent / "nats-server")
        proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(self.port)], start_new_session=True)
        wait_for_port(self.port, proc, "nats-server without JetStream")
        self.server = LocalServer("nats", f"nats://127.0.0.1:{self.port}", proc)


@pytest.fixture
async def nats(tmp_path: Path) -> AsyncIterator[Nats]:
    port = free_port()
    own = Nats(tmp_path / "nats", port, start_nats(tmp_path / "nats", port))
    yield own
    own.server.stop()


@pytest.fixture
async def bus(nats: Nats) -> AsyncIterator[Bus]:
    bus = await connect(nats.server.url, name="tests")
    yield bus
    await bus.close()


def _settings(nats: Nats, tmp_path: Path) -> ExecutorSettings:
    return fast_executor(nats.server.url, NODE, tmp_path / "state")


@asynccontextmanager
async def executing(settings: ExecutorSettings) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    try:
        yield task
    finally:
        stop.set()
        await task


async def _events(bus: Bus, job_id: int | None = None) -> list[ev.Event]:
    try:
        log = await read_log(bus)
    except (TimeoutError, NatsError):  # the test's own connection is coming back too
        return []
    return [e for _, _, e in log if job_id is None or getattr(e, "job_id", None) == job_id]


async def _place(bus: Bus, work: Path, script: str, core: int) -> int:
    job = submitted().model_copy(update={"working_directory": str(work), "script": script, "time_limit_s": 120})
    job_id = await bus.publish(job)
    await bus.publish(ev.JobPlaced(job_id=job_id, node=NODE, cores=(core,), memory_mb=100), by_scheduler=True)
    return job_id


async def _started(bus: Bus, job_id: int) -> bool:
    return bool(starts(await _events(bus, job_id)))


async def _the_outcome(bus: Bus, job_id: int) -> ev.Event:
    async def probe() -> list[ev.Event]:
        return [e for e in await _events(bus, job_id) if isinstance(e, ev.TERMINAL_JOB_EVENTS)]

    await eventually(probe, timeout=60, what=f"outcome of job {job_id}")
    await asyncio.sleep(0.5)  # a duplicate would be stored right behind it
    outcomes = await probe()
    assert len(outcomes) == 1, f"job {job_id} has {len(outcomes)} outcomes: {outcomes}"
    return outcomes[0]


def _failed_publishes(caplog: pytest.LogCaptureFixture) -> Callable[[], Any]:
    async def probe() -> int:
        count = sum(1 for r in caplog.records if r.getMessage().startswith("outbox: publish failed"))
        return count if count > 30 else 0

    return probe


async def _exists(path: Path) -> bool:
    return path.exists()


async def test_jobs_and_their_outcomes_ride_out_a_nats_outage(
    nats: Nats, bus: Bus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="conductor.executor")
    work = tmp_path / "work"
    work.mkdir()
    settings = _settings(nats, tmp_path)
    async with executing(settings) as executor:
        await eventually(lambda: _events(bus), what="node registered")
        # One job ends while NATS is away; the other runs through the outage and past the restart,
        # until the test lets it end: a job killed early could not write its file.
        ends_in_outage = await _place(bus, work, f"sleep 1; echo done > {work}/early.txt", core=0)
        spans_it = await _place(
            bus, work, f"until [ -e {work}/go ]; do sleep 0.1; done; echo survived > survived.txt", 1
        )
        await eventually(lambda: _started(bus, ends_in_outage), what="first job started")
        await eventually(lambda: _started(bus, spans_it), what="second job started")

        nats.kill()
        await eventually(lambda: _exists(work / "early.txt"), what="first job done during the outage")
        nats.without_jetstream()
        await eventually(_failed_publishes(caplog), timeout=60, what="more than 30 failed publishes")
        assert not executor.done()
        nats.kill()
        nats.restart()

        early = await _the_outcome(bus, ends_in_outage)
        assert isinstance(early, ev.JobCompleted) and early.exit_code == 0
        (work / "go").touch()
        late = await _the_outcome(bus, spans_it)
        assert isinstance(late, ev.JobCompleted) and late.exit_code == 0
        assert (work / "survived.txt").read_text() == "survived\n"
        # The executor still takes placements after the restart.
        after = await _place(bus, work, "true", core=0)
        assert isinstance(await _the_outcome(bus, after), ev.JobCompleted)
        for job_id in (ends_in_outage, spans_it):
            kinds = [e.type for e in await _events(bus, job_id)]
            assert kinds == ["JobPlaced", "JobStarted", "JobCompleted"], kinds


async def test_an_outcome_kept_while_nats_is_away_is_delivered_by_the_next_executor(
    nats: Nats, bus: Bus, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    settings = _settings(nats, tmp_path)
    async with executing(settings):
        await eventually(lambda: _events(bus), what="node registered")
        job_id = await _place(bus, work, "sleep 1", core=0)
        await eventually(lambda: _started(bus, job_id), what="job started")
        nats.kill()

        async def kept() -> list[Path]:
            return list(settings.outbox_dir.glob(f"*-{job_id}-JobCompleted.json"))

        await eventually(kept, what="the outcome kept in the outbox")
    # That executor stopped with NATS still away; the outcome is still owed, on disk.
    assert await kept()
    nats.restart()
    async with executing(settings):
        outcome = await _the_outcome(bus, job_id)
        assert isinstance(outcome, ev.JobCompleted) and outcome.exit_code == 0

        async def emptied() -> bool:
            return not list(settings.outbox_dir.glob("*.json"))

        await eventually(emptied, what="the outbox emptied")
