"""The executor: one per node. Registers the node, runs what the scheduler placed on it, reports.

- Placements and cancel requests come through one durable consumer filtered on this node's placement
  subject and on cancel requests, handled in stream order, one at a time, acked after handling.
- Before a job starts, a marker folder ``jobs/<id>`` is written; a redelivered placement whose marker
  exists is never started again (nothing runs twice).
- A cancel request can be stored before the placement it concerns (the scheduler decided from a state
  that did not have it yet): so before starting a job we look the request up in the stream.
- Jobs left by an executor that died are reported NODE_FAIL at start (re-adopting them through a
  per-job supervisor is the next step, see docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path

import psutil
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor import environment as envs
from conductor_executor.output import upload
from conductor_executor.process import JobProcess, spawn
from conductor_executor.settings import ExecutorSettings
from conductor_platform.bus import Bus, connect

log = logging.getLogger("conductor.executor")


def _start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _kill_leftovers(record: Path) -> None:
    """Kill what is left of a job an earlier executor ran, if it is still that job: a pid recorded
    before a reboot may belong to something else now, so its start time must match too."""
    try:
        info = json.loads(record.read_text())
        pid, started = int(info["pid"]), info.get("started")
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return
    if started is None or _start_time(pid) != started:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class Executor:
    def __init__(self, bus: Bus, settings: ExecutorSettings) -> None:
        self.bus, self.settings = bus, settings
        self.node = settings.node
        self.running: dict[int, JobProcess] = {}
        self.monitors: set[asyncio.Task[None]] = set()
        settings.jobs_dir.mkdir(parents=True, exist_ok=True)

    # -- reporting -------------------------------------------------------------------------------
    async def report(self, event: ev.Event) -> None:
        for attempt in range(30):  # NATS may be restarting: the outcome must not be lost
            try:
                await self.bus.publish(event)
                return
            except Exception as err:
                log.warning(
                    "report failed; retrying", extra={"event": event.type, "error": str(err), "attempt": attempt}
                )
                await asyncio.sleep(1)
        raise RuntimeError(f"could not report {event.type} for job {getattr(event, 'job_id', '?')}")

    async def finish(self, job_id: int, event: ev.Event) -> None:
        await self.report(event)
        (self.settings.jobs_dir / str(job_id) / "done").write_text(event.type)

    # -- startup ---------------------------------------------------------------------------------
    async def recover(self) -> None:
        """Jobs whose executor died with them still running: kill what is left, report NODE_FAIL."""
        for folder in sorted(self.settings.jobs_dir.iterdir(), key=lambda p: p.name):
            if not folder.name.isdigit() or (folder / "done").exists():
                continue
            job_id = int(folder.name)
            _kill_leftovers(folder / "process.json")
            message = "the executor stopped while the job ran; its outcome is unknown"
            await self.finish(
                job_id, ev.JobFailed(job_id=job_id, node=self.node, exit_code=None, message=message, node_fail=True)
            )
            log.warning("job lost with a previous executor", extra={"job_id": job_id})

    async def register(self) -> None:
        await self.bus.publish(
            ev.NodeRegistered(
                node=self.node,
                cpus=self.settings.cpus,
                memory_mb=self.settings.memory_mb,
                partitions=tuple(self.settings.partitions),
            )
        )
        log.info(
            "node registered",
            extra={"node": self.node, "cpus": self.settings.cpus, "memory_mb": self.settings.memory_mb},
        )

    # -- handling ----------------------------------------------------------------------------------
    async def handle(self, event: ev.Event) -> None:
        match event:
            case ev.JobPlaced(node=node) if node == self.node:
                await self.start(event)
            case ev.JobCancelRequested(job_id=job_id) if job_id in self.running:
                log.info("cancelling", extra={"job_id": job_id})
                self.running[job_id].kill(cancelled=True)

    async def cancel_requested(self, job_id: int) -> bool:
        try:
            await self.bus.js.get_last_msg(self.bus.stream, subjects.cancel_of(job_id))
        except NotFoundError:
            return False
        return True

    async def submission(self, job_id: int) -> ev.JobSubmitted:
        raw = await self.bus.js.get_msg(self.bus.stream, seq=job_id)
        event = ev.decode(raw.data or b"")
        if not isinstance(event, ev.JobSubmitted):
            raise ValueError(f"stream sequence {job_id} is a {event.type}, not a JobSubmitted")
        return event

    async def start(self, placement: ev.JobPlaced) -> None:
        job_id = placement.job_id
        folder = self.settings.jobs_dir / str(job_id)
        if folder.exists():
            log.info("placement redelivered; not starting the job again", extra={"job_id": job_id})
            return
        # Look-ups first: if they fail, nothing is marked and the redelivered placement starts over.
        cancelled, job = await asyncio.gather(self.cancel_requested(job_id), self.submission(job_id))
        folder.mkdir(parents=True)
        if cancelled:
            await self.finish(job_id, ev.JobCancelled(job_id=job_id, node=self.node))
            return
        files = envs.job_files(job_id, job)
        script = folder / "script.sh"
        script.write_text(job.script)
        try:
            Path(job.working_directory).mkdir(parents=True, exist_ok=True)
            process = await spawn(
                job_id,
                script,
                job.working_directory,
                envs.job_environment(os.environ, job_id, job, placement),
                files.stdout,
                files.stderr,
                envs.host_cpus(placement.cores, sorted(os.sched_getaffinity(0))),
                self.settings.kill_grace_s,
                placement.memory_mb,
            )
        except OSError as err:
            message = f"could not start the job: {err}"
            await self.finish(job_id, ev.JobFailed(job_id=job_id, node=self.node, exit_code=None, message=message))
            log.warning("job failed to start", extra={"job_id": job_id, "error": str(err)})
            return
        (folder / "process.json").write_text(json.dumps({"pid": process.pid, "started": _start_time(process.pid)}))
        self.running[job_id] = process
        started = ev.JobStarted(job_id=job_id, node=self.node, pid=process.pid)
        log.info("started", extra={"job_id": job_id, "pid": process.pid, "cores": placement.cores})
        # Reported from the job's own task, so the next placement does not wait for this publish.
        task = asyncio.create_task(self.monitor(process, started, job.time_limit_s, files))
        self.monitors.add(task)
        task.add_done_callback(self.monitors.discard)

    async def monitor(
        self, process: JobProcess, started: ev.JobStarted, time_limit_s: int | None, files: envs.JobFiles
    ) -> None:
        job_id = process.job_id
        await self.report(started)
        outcome = await process.wait(time_limit_s)
        self.running.pop(job_id, None)
        code = outcome.exit_code
        event: ev.Event
        if outcome.cancelled:
            event = ev.JobCancelled(job_id=job_id, node=self.node, exit_code=code)
        elif outcome.out_of_memory:
            event = ev.JobOutOfMemory(job_id=job_id, node=self.node, exit_code=code)
        elif outcome.timed_out:
            event = ev.JobTimedOut(job_id=job_id, node=self.node, exit_code=code)
        elif code == 0:
            event = ev.JobCompleted(job_id=job_id, node=self.node, exit_code=0)
        else:
            event = ev.JobFailed(job_id=job_id, node=self.node, exit_code=code)
        # Output first, so a job seen as finished has its output available; but the outcome, always.
        try:
            await upload(await self.bus.outputs(), job_id, files, self.settings.output_max_bytes)
        except Exception:
            log.exception("output not kept", extra={"job_id": job_id})
        await self.finish(job_id, event)
        log.info("finished", extra={"job_id": job_id, "outcome": event.type, "exit_code": code})

    async def police_memory(self, stop: asyncio.Event) -> None:
        """Sample every running job's memory; a job over its memory_per_node is killed (OUT_OF_MEMORY)."""
        while not stop.is_set():
            for process in list(self.running.values()):
                used = await asyncio.to_thread(process.memory_mb)
                if used > process.memory_limit_mb and not process.out_of_memory:
                    log.warning(
                        "over its memory limit; killing",
                        extra={"job_id": process.job_id, "memory_mb": round(used), "limit_mb": process.memory_limit_mb},
                    )
                    process.kill(out_of_memory=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.memory_poll_s)

    async def shutdown(self) -> None:
        """Stopping the executor stops its jobs: none is left running unaccounted for."""
        for process in list(self.running.values()):
            process.kill()
        for task in list(self.monitors):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, self.settings.kill_grace_s + 5)


async def run(settings: ExecutorSettings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    bus = await connect(settings.nats_url, name=f"conductor-executor-{settings.node}")
    executor = Executor(bus, settings)
    # The consumer exists before the node is announced, so it cannot miss a placement; a new one
    # starts at new messages, so placements for an earlier node of the same name are not replayed.
    sub = await bus.js.pull_subscribe_bind(durable=await _ensure_consumer(bus, settings.node), stream=bus.stream)
    await executor.recover()
    await executor.register()
    police = asyncio.create_task(executor.police_memory(stop))
    try:
        while not stop.is_set():
            try:
                # One at a time: a batch fetch waits out its whole timeout for the rest of the batch.
                msgs = await sub.fetch(1, timeout=1)
            except (NatsTimeout, TimeoutError):
                continue
            for msg in msgs:
                try:
                    await executor.handle(ev.decode(msg.data))
                except Exception:
                    # A passing fault (NATS restarting): retry this message later rather than
                    # exiting, which would leave the running jobs to a restarted executor's recovery.
                    log.exception("handling failed; will retry", extra={"subject": msg.subject})
                    await msg.nak(delay=1)
                    continue
                await msg.ack()
    finally:
        police.cancel()
        await executor.shutdown()
        await bus.close()


async def _ensure_consumer(bus: Bus, node: str) -> str:
    durable = f"executor-{node}"
    try:
        await bus.js.consumer_info(bus.stream, durable)
    except NotFoundError:
        await bus.js.add_consumer(
            bus.stream,
            ConsumerConfig(
                durable_name=durable,
                filter_subjects=[subjects.placements_for(node), subjects.CANCEL_ALL],
                deliver_policy=DeliverPolicy.NEW,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30,
                max_ack_pending=1000,
            ),
        )
    return durable
