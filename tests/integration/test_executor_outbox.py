"""What an executor owes the log while NATS is unreachable is delivered by a later start."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor import supervision as sv
from conductor_executor.service import run
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus, connect
from conductor_platform.localservers import LocalServer, free_port, start_nats
from tests.integration.helpers import eventually, fast_executor, read_log
from tests.unit.scheduling import submitted

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
        assert sv.read_done(unreachable.jobs_dir / "7") is not None
    finally:
        stop.set()
        await second


async def _log_of(bus: Bus) -> list[ev.Event]:
    try:
        return [e for _, _, e in await read_log(bus)]
    except (TimeoutError, NatsError):  # the test's own connection is coming back too
        return []


async def _has(bus: Bus, kind: type, job_id: int | None = None) -> bool:
    return any(isinstance(e, kind) and getattr(e, "job_id", None) == job_id for e in await _log_of(bus))


@dataclass
class Outage:
    """A nats-server of the test's own (the session's cannot be stopped under the other tests), and
    an executor on it whose job ended while the server was down."""

    folder: Path
    port: int
    server: LocalServer
    settings: ExecutorSettings
    work: Path
    job_id: int = 0

    def restart(self) -> None:
        self.server = start_nats(self.folder, self.port)


@asynccontextmanager
async def _executing(settings: ExecutorSettings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await task


@asynccontextmanager
async def _a_job_ended_while_nats_was_down(tmp_path: Path) -> AsyncIterator[Outage]:
    """On return the executor has stopped, with the job's outcome owed in its outbox, NATS still down."""
    folder, port = tmp_path / "nats", free_port()
    server = start_nats(folder, port)
    settings = fast_executor(server.url, NODE, tmp_path / "state")
    outage = Outage(folder, port, server, settings, tmp_path / "work")
    outage.work.mkdir()
    try:
        async with _executing(settings):
            bus = await connect(server.url, name="tests")
            try:
                await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
                script = f"until [ -e {outage.work}/go ]; do sleep 0.05; done; echo out; echo err >&2"
                job = submitted().model_copy(
                    update={"working_directory": str(outage.work), "script": script, "standard_error": "e"}
                )
                outage.job_id = await bus.publish(job)
                placed = ev.JobPlaced(job_id=outage.job_id, node=NODE, cores=(0,), memory_mb=10)
                await bus.publish(placed, by_scheduler=True)
                await eventually(lambda: _has(bus, ev.JobStarted, outage.job_id), what="job started")
            finally:
                await bus.close()
            server.process.kill()
            server.process.wait()
            (outage.work / "go").touch()

            async def kept() -> list[Path]:
                return list(settings.outbox_dir.glob(f"*-{outage.job_id}-JobCompleted.json"))

            await eventually(kept, what="the outcome kept in the outbox while NATS is away")
        yield outage
    finally:
        outage.server.stop()


async def test_output_of_a_job_that_ends_while_nats_is_away_is_kept_before_its_outcome(tmp_path: Path) -> None:
    # The executor restarts during the outage too: output is owed across restarts like the outcome.
    async with _a_job_ended_while_nats_was_down(tmp_path) as outage:
        job_id = outage.job_id
        outage.restart()
        bus = await connect(outage.server.url, name="tests")
        try:
            async with _executing(outage.settings):
                await eventually(lambda: _has(bus, ev.JobCompleted, job_id), timeout=60, what="the outcome published")
                # Stored before the outcome was published, and an object store never drops it after.
                store = await bus.outputs()
                assert (await store.get(subjects.output_object(job_id, "stdout"))).data == b"out\n"
                assert (await store.get(subjects.output_object(job_id, "stderr"))).data == b"err\n"

                # Nothing is stored for a job that wrote nothing.
                job = submitted().model_copy(update={"working_directory": str(outage.work), "script": "true"})
                quiet = await bus.publish(job)
                await bus.publish(ev.JobPlaced(job_id=quiet, node=NODE, cores=(1,), memory_mb=10), by_scheduler=True)
                await eventually(lambda: _has(bus, ev.JobCompleted, quiet), what="the quiet job completed")
                with pytest.raises(NotFoundError):
                    await store.get(subjects.output_object(quiet, "stdout"))
        finally:
            await bus.close()


async def test_an_outcome_damaged_on_disk_during_an_outage_still_ends_its_job(tmp_path: Path) -> None:
    # The review's repro: the executor SIGKILLed with the outcome owed, the file cut to 40 bytes.
    async with _a_job_ended_while_nats_was_down(tmp_path) as outage:
        [kept] = outage.settings.outbox_dir.glob(f"*-{outage.job_id}-JobCompleted.json")
        os.truncate(kept, 40)
        outage.restart()
        bus = await connect(outage.server.url, name="tests")
        try:
            async with _executing(outage.settings):

                async def failed() -> list[ev.JobFailed]:
                    return [e for e in await _log_of(bus) if isinstance(e, ev.JobFailed)]

                [outcome] = await eventually(failed, timeout=60, what="the job's substitute outcome")
                assert outcome.job_id == outage.job_id and outcome.node_fail
                assert "record of this job's outcome was damaged" in outcome.message

                async def registered_after() -> bool:
                    events = await _log_of(bus)
                    return isinstance(events[-1], ev.NodeRegistered) and events.index(outcome) < len(events) - 1

                await eventually(registered_after, what="the registration behind it published")
                # Its output went with it: the job ran to its end, only the record was lost.
                store = await bus.outputs()
                assert (await store.get(subjects.output_object(outage.job_id, "stdout"))).data == b"out\n"
        finally:
            await bus.close()
