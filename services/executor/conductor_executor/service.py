"""The executor: one per node. Registers the node, runs what the scheduler placed on it, reports.

- Placements and cancel requests come through one durable consumer filtered on this node's placement
  subject and on cancel requests, handled in stream order, one at a time, acked after handling.
- Before a job starts, a marker folder ``jobs/<id>`` is written; a redelivered placement whose marker
  exists is never started again (nothing runs twice). Every job with a marker ends with an outcome.
- A cancel request can be stored before the placement it concerns (the scheduler decided from a state
  that did not have it yet): so before starting a job we look the request up in the stream.
- Whatever the executor reports goes through an outbox on disk (``outbox.py``) before its ``done``
  marker: NATS being away for any time delays outcomes, never loses them, and never stops a job.
- NATS trouble never ends the executor: every NATS call is retried with backoff. Only a message that
  fails for another reason ``max_deliveries`` times is given up (logged, its job reported FAILED).
  The one exception is a connection nats-py closed for good (``ConnectionClosedForGood``,
  conductor_platform/closed.py), which it never opens again: the executor ends, leaving its jobs
  running, and its supervisor starts it again (it takes the jobs over, as after any death).
- Every job runs under a small shell supervisor of its own (``supervision.py``) that outlives the
  executor and records the job's exit: a restarted executor takes over the jobs still running and
  reports those that ended meanwhile with their real status and end time (``adoption.py``); only a
  job whose supervisor vanished without a record ends NODE_FAIL. A stop leaves jobs running, unless
  ``stop_jobs_on_exit`` (``conductor up`` sets it: its Ctrl-C leaves nothing behind).
- A job's output goes to the object store from the outbox publisher, right before its outcome: it
  rides out NATS outages and executor restarts the same way.
- Every event about a job carries the run of its placement (``JobPlaced.run``); job folders are per
  run. Node liveness (heartbeats, NodeLost, self-fencing) is in ``heartbeat.py`` and ``liveness.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from conductor_contracts import events as ev
from conductor_contracts import heartbeats, subjects
from conductor_contracts.text import printable
from conductor_executor import compiled, fence_lease, traces, twins
from conductor_executor import environment as envs
from conductor_executor import supervision as sv
from conductor_executor.adoption import LOST_SUPERVISOR, take_stock
from conductor_executor.fit import misfit
from conductor_executor.heartbeat import Heartbeat
from conductor_executor.heartbeat import value as heartbeat_value
from conductor_executor.leftovers import kill_left_by_ended, kill_unrecorded, start_time, sweep_ended
from conductor_executor.liveness import Liveness
from conductor_executor.memory_sample import trees_memory_mb
from conductor_executor.outbox import Outbox
from conductor_executor.outcomes import outcome_event
from conductor_executor.output import (
    OWN_FOLDER,
    make_working_directory,
    open_outputs,
    record_files,
    recorded_files,
    upload,
)
from conductor_executor.placements import PlacementReader, durable_name, subscribe
from conductor_executor.process import JobProcess, start_supervisor, supervised
from conductor_executor.retention import FolderSweep, Key, keep_bounded
from conductor_executor.self_drain import SelfDrain, naming
from conductor_executor.settings import ExecutorSettings
from conductor_platform import tracing
from conductor_platform.bus import Bus, connect
from conductor_platform.closed import ConnectionClosedForGood, closed_for_good, raise_if_closed
from conductor_platform.retry import Backoff, pause, retrying, transient
from conductor_platform.tasks import cancel_until_done

log = logging.getLogger("conductor.executor")

T = TypeVar("T")

# A clean stop waits this long for the outbox to reach the stream; what is left goes out next start.
_DRAIN_ON_STOP_S = 5.0
_MAX_MESSAGE = 1000
# Messages fetched at once: their look-ups go out together (``Executor._look_ahead``).
_BATCH = 32
# Placements of a batch started at once: each waits on its spawn in a worker thread and on the disk,
# and one after the other the last of a batch waited for all the others (placed -> started ~200-400
# ms under load, which bounded a node's completions more than its CPU did).
_STARTS_AT_ONCE = 4
# Jobs this process ran to their end, by the state their outcome gives them (Slurm's names).
JOBS_FINISHED = Counter(
    "conductor_executor_jobs_finished", "Jobs this executor ran that ended, by the state they ended in", ["state"]
)


def _short(err: BaseException) -> str:
    # Errors quote paths and values of the job, which may hold what an event cannot encode.
    return printable(str(err) or type(err).__name__, _MAX_MESSAGE)


class Executor:
    def __init__(self, settings: ExecutorSettings, stop: asyncio.Event | None = None, instance: str = "") -> None:
        self.settings = settings
        self.node = settings.node
        self.instance = instance  # twins.instance_id: which executor of the node this is
        # Set when another executor of the node took it over while this one was frozen or cut off.
        self.taken_over_by: str | None = None
        self.last_beat = time.monotonic()  # the last heartbeat that got through
        self._placed_subject = subjects.placements_for(settings.node)
        self._lost_subject = subjects.node_lost_of(settings.node)
        # Set when the executor stops: what keeps retrying a write to the disk gives up then.
        self.stop = stop or asyncio.Event()
        self._bus: Bus | None = None
        self.running: dict[int, JobProcess] = {}
        self.placements: dict[int, ev.JobPlaced] = {}  # of the running jobs: what they hold
        # Set once a stop has ended (or left) the jobs and sent what it owed: the node's heartbeats
        # last until then, else it was declared lost while it stopped jobs that ignore SIGTERM, and
        # jobs placed on it meanwhile ended NODE_FAIL without running (review of 2026-12-02).
        self.stopped = asyncio.Event()
        # Those of ``placements`` whose job is being started (not running yet, and not dying).
        self._starting: dict[int, ev.JobPlaced] = {}
        self.monitors: set[asyncio.Task[None]] = set()
        # Placements given up and reported failed with no folder to say so (the disk refused it):
        # a redelivery must not start them. Held in memory only, so not across a restart.
        self._given_up: set[tuple[int, int]] = set()
        # The monitor of each running job: a stop that leaves the jobs running ends only these.
        self.watchers: dict[int, asyncio.Task[None]] = {}
        # Runs whose output is in the object store and whose outcome is not published yet: a retried
        # publish does not upload it again.
        self._uploaded: set[tuple[int, int]] = set()
        # The stream sequence of this node's newest registration stored (0: none seen by this process).
        self.registered_seq = 0
        self.first_registered_seq = 0  # this process's first registration stored
        # Resolved once: a job's output path is compared with them wherever the path's links lead.
        self._protected = {settings.state_dir.resolve(): OWN_FOLDER} | {
            folder.resolve(): f"{folder}, a folder this node protects (CONDUCTOR_PROTECTED_DIRS)"
            for folder in settings.protected_dirs
        }
        self._protecting: tuple[Path | None, dict[Path, str]] = (None, self._protected)
        # The latest run (>= 1) of each requeued job with a folder here, read from the jobs folder at
        # the first placement and kept up as folders are made: listing a folder that keeps every job
        # ever run here, for every placement, cost more per job the longer the executor ran.
        self._reruns: dict[int, int] | None = None
        # Jobs that ended by themselves since the last look for what they left running (folder ->
        # when the supervisor started; ``leftovers.sweep_ended``).
        self.ended: dict[Path, float] = {}
        # The look-ups sent ahead for the placements of the batch being handled, by (job, run).
        self._lookups: dict[tuple[int, int], asyncio.Future[tuple[bool, ev.JobSubmitted]]] = {}
        self._cancels_ahead: asyncio.Future[bool] | None = None  # the last batch's (``_look_ahead``)
        # And one for the batch: the first NodeLost of this node stored after its first placement, with
        # that placement's sequence (``lost_after``).
        self._lost_ahead: tuple[int, asyncio.Future[int]] | None = None
        # Computed once, not per job (os.environ decoded and a settings path built each time cost
        # ~30 us per job): what jobs inherit is the executor's environment at its start.
        self._jobs_dir = settings.jobs_dir
        self._environment = envs.inherited(os.environ)
        # The shell form until ``run`` has the compiled one built and checked (``compiled.py``).
        self.supervisor: Path | None = None
        self.supervisor_pins = False  # whether it moves itself to the job's CPUs (``compiled.pins``)
        try:
            settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # each job's marker says so in its turn; the executor must not crash-loop
            log.error("jobs folder unusable", extra={"folder": str(settings.jobs_dir), "error": str(err)})
        self.outbox = Outbox(
            settings.outbox_dir,
            self._publish,
            self.backoff(),
            substitute=self.substitute,
            before_publish=self._keep_output,
            spares=settings.outbox_spares_dir,
        )
        self.liveness = Liveness(self)
        self.self_drain = SelfDrain(settings.node, (settings.state_dir,), lambda event: self.bus.publish(event))
        # What the supervisors of requeue jobs watch to know this process lives (``fence_lease``).
        self.lease = (settings.state_dir / settings.node / fence_lease.NAME).absolute()
        self._fence_after_s = fence_lease.fence_after_s(settings.node_lost_after_s, settings.heartbeat_s)

    @property
    def bus(self) -> Bus:
        assert self._bus is not None, "not connected yet"
        return self._bus

    def folder(self, job_id: int, run: int) -> Path:
        return self._jobs_dir / sv.folder_name(job_id, run)

    def backoff(self) -> Backoff:
        return Backoff(self.settings.retry_first_s, self.settings.retry_max_s)

    # -- reporting -------------------------------------------------------------------------------
    async def _publish(self, event: ev.Event, headers: dict[str, str]) -> None:
        # While disconnected nats-py would buffer the request and wait out the JetStream timeout;
        # failing at once keeps the outbox's pacing its own.
        if self._bus is None or not self._bus.nc.is_connected:
            raise ConnectionError("not connected to NATS")
        seq = await self._bus.publish(event, headers=headers)
        if isinstance(event, ev.TERMINAL_JOB_EVENTS):
            self._uploaded.discard((event.job_id, event.run))
        elif isinstance(event, ev.NodeRegistered):
            self.registered_seq = max(self.registered_seq, seq)
            self.first_registered_seq = self.first_registered_seq or seq

    async def _keep_output(self, event: ev.Event) -> None:
        """Before a job's outcome is published: its output into the object store. NATS being away
        raises, which the outbox treats as a failed publish (it backs off and tries both again)."""
        if not isinstance(event, ev.TERMINAL_JOB_EVENTS) or (event.job_id, event.run) in self._uploaded:
            return
        folder = self.folder(event.job_id, event.run)
        files = recorded_files(folder)
        if files is None:  # it never started: there is no output
            return
        if {sv.FENCED, sv.REPLACED} & sv.read_kill(folder):
            # Its run may have been ended and the job run again elsewhere meanwhile: this copy must not
            # replace that run's output.
            return
        if self._bus is None or not self._bus.nc.is_connected:
            raise ConnectionError("not connected to NATS")
        try:
            store = await self._bus.outputs()
        except Exception as err:
            if transient(err):
                raise
            # Refused for good (a bucket of another configuration...): the outcome must not wait on it.
            log.warning("output not kept", extra={"job_id": event.job_id, "error": _short(err)})
        else:
            await upload(store, event.job_id, files, self.settings.output_max_bytes)
        self._uploaded.add((event.job_id, event.run))

    def substitute(self, job_id: int | None, run: int, kind: str, error: str) -> ev.Event | None:
        """What replaces an outbox file that cannot be read, from what its name says it was."""
        if kind == "NodeRegistered":
            return self.registration()
        if job_id is None or not (kind == "JobStarted" or kind in ev.TERMINAL_TYPES):
            return None
        if kind == "JobStarted":
            process = self.running.get(job_id)
            if process is not None and process.run == run:
                return ev.JobStarted(job_id=job_id, node=self.node, pid=process.pid, run=run)
            if self.outbox.holds_outcome(job_id, run):  # its outcome follows and ends the job
                return None
        message = f"the executor's record of this job's outcome was damaged: {_short(ValueError(error))}"
        return ev.JobFailed(job_id=job_id, node=self.node, exit_code=None, message=message, node_fail=True, run=run)

    async def finish(
        self, job_id: int, event: ev.Event, *, queued: bool = False, traceparent: str | None = None
    ) -> None:
        """The outcome is durable in the outbox before the marker says the job is done: a disk that
        refuses it is tried again until it takes it or the executor stops (then no marker, and the
        next start reports the job NODE_FAIL). ``queued``: the outcome is in the outbox already.
        ``traceparent``: published with the outcome."""
        if not queued and not await self.outbox.keep(event, self.stop, traceparent):
            return
        backoff = self.backoff()
        while True:
            try:
                sv.mark_done(self.folder(job_id, _run(event)), event.type)
                return
            except OSError as err:
                # The outcome is safe in the outbox; a restart finds it there and writes the marker.
                if self.stop.is_set():
                    return
                delay = backoff.next()
                log.warning(
                    "could not mark a job done; retrying",
                    extra={"job_id": job_id, "error": str(err), "retry_in_s": delay},
                )
                await pause(self.stop, delay)

    def _report(self, job_id: int, event: ev.Event, traceparent: str | None = None) -> None:
        """``finish`` for a job that ends as its placement is handled: at once, so that the outcome
        is on disk before the placement is acked; if the disk refuses, in a task of its own, so that
        it holds up this job and not the consumer (cancels of running jobs must still get through)."""
        queued = False
        try:
            self.outbox.put(event, traceparent)
            queued = True
            sv.mark_done(self.folder(job_id, _run(event)), event.type)
            return
        except OSError as err:
            log.warning("could not record a job's outcome; retrying", extra={"job_id": job_id, "error": str(err)})
        task = asyncio.create_task(self.finish(job_id, event, queued=queued, traceparent=traceparent))
        self.monitors.add(task)
        task.add_done_callback(self._monitor_done)

    # -- startup ---------------------------------------------------------------------------------
    async def recover(self) -> None:
        """Jobs an earlier executor left without an outcome: taken over while their supervisor runs,
        reported from its record when they ended meanwhile, NODE_FAIL when nothing says how they ended."""
        stock = take_stock(self.settings.jobs_dir, self.outbox.holds_outcome, self.settings.kill_grace_s)
        for running in stock.running:
            self._adopt(running.process, running.record)
        for (job_id, run), ended in stock.ended.items():
            record = ended.record
            # As for a job this executor watched: the record's mtime is on a coarse clock.
            ended_at = ended.exit.ended_at if record is None else max(ended.exit.ended_at, record.start)
            event = outcome_event(job_id, self.node, ended.exit.code, ended.reasons, ended_at, "", run)
            placed, started_at = (None, None) if record is None else (record.traceparent, record.start)
            if not ended.reasons and record is not None:  # what it left is looked for with the others'
                self.ended[self.folder(job_id, run)] = record.start
            with traces.ending(job_id, run, self.node, placed, event.type, started_at) as carried:
                await self._owed_start(record, job_id, run, placed)
                await self.finish(job_id, event, traceparent=carried)
                log.info("job ended while no executor ran", extra={"job_id": job_id, "outcome": event.type})
        if stock.unrecorded:
            try:
                await asyncio.to_thread(kill_unrecorded, stock.unrecorded)
            except Exception:  # what can be reported still is
                log.exception("looking for unrecorded jobs failed")
        for (job_id, run), lost in stock.lost.items():
            event = outcome_event(job_id, self.node, None, lost.reasons, None, lost.message, run)
            await self._owed_start(lost.record, job_id, run, None if lost.record is None else lost.record.traceparent)
            await self.finish(job_id, event)
            log.warning("job lost with a previous executor", extra={"job_id": job_id, "why": lost.message})

    async def _owed_start(self, record: sv.ProcessRecord | None, job_id: int, run: int, placed: str | None) -> None:
        """The JobStarted of a run an earlier executor started and had not marked announced, queued
        before its outcome. As a JobStarted of its own, not in the outcome: that executor may have
        queued it just before it stopped, and a JobStarted queued twice is stored once (its
        Nats-Msg-Id), which a start in the outcome beside it would not be."""
        if record is not None and not record.announced:
            await self.outbox.keep(self._started(job_id, record.pid, record.start, run), self.stop, placed)

    def _started(self, job_id: int, pid: int, at: float | None, run: int) -> ev.JobStarted:
        when = {} if at is None else {"occurred_at": datetime.fromtimestamp(at, UTC)}
        return ev.JobStarted(job_id=job_id, node=self.node, pid=pid, run=run, **when)

    def _adopt(self, process: JobProcess, record: sv.ProcessRecord) -> None:
        """Run on with a job an earlier executor started: nothing is reported for it until it ends
        (its JobStarted too, if that executor had not got it into the outbox)."""
        job_id = process.job_id
        self._supersede(job_id, process.run)
        if not process.lost:
            self.running[job_id] = process
        self.placements[job_id] = ev.JobPlaced(
            job_id=job_id, node=self.node, cores=record.cores, memory_mb=record.memory_mb, run=process.run
        )
        if process.reasons:  # that executor was killing it: so does this one, for the same reasons
            process.kill()
        owed = not record.announced and not process.lost
        started = self._started(job_id, record.pid, record.start, process.run) if owed else None
        deadline = None if record.time_limit_s is None else record.start + record.time_limit_s
        # Not held back: the earlier executor may have queued it already (see ``_owed_start``).
        self._watch(process, started, deadline, record, hold=False)
        log.info("job taken over from a previous executor", extra={"job_id": job_id, "pid": process.pid})

    def _supersede(self, job_id: int, run: int) -> None:
        """A later run of a job on this node means the scheduler ended the earlier one (only a NodeLost
        requeues): if that one still runs here (its NodeLost was missed), it is killed as lost."""
        older = self.running.get(job_id)
        if older is not None and older.run < run:
            log.warning("a later run of a running job placed here; killing the earlier run", extra={"job_id": job_id})
            older.kill(lost=True)
            del self.running[job_id]

    def _watch(
        self,
        process: JobProcess,
        started: ev.JobStarted | None,
        deadline: float | None,
        record: sv.ProcessRecord | None = None,
        traceparent: str | None = None,
        *,
        hold: bool = True,
    ) -> None:
        task = asyncio.create_task(self.monitor(process, started, deadline, record, traceparent, hold=hold))
        self.monitors.add(task)
        self.watchers[process.job_id] = task
        task.add_done_callback(self._monitor_done)

    def registration(self) -> ev.NodeRegistered:
        return ev.NodeRegistered(
            node=self.node,
            cpus=self.settings.cpus,
            memory_mb=self.settings.memory_mb,
            partitions=tuple(self.settings.partitions),
            instance=self.instance,
        )

    def heartbeat_value(self) -> bytes:
        """A heartbeat as ``heartbeat.Heartbeat`` writes it (the first one, written by the twin check)."""
        return heartbeat_value(self.registration(), time.time(), self.instance, self.settings.node_lost_after_s)

    async def register(self) -> None:
        # Through the outbox too: it reaches the log after the outcomes a previous run still owed.
        if not await self.outbox.keep(self.registration(), self.stop):
            return
        log.info(
            "node registration queued",
            extra={"node": self.node, "cpus": self.settings.cpus, "memory_mb": self.settings.memory_mb},
        )

    async def replacing(self, previous: str) -> bool:
        """This executor took the node over from ``previous``, another instance that stopped beating
        (its state folder is not this one's: nothing of its runs can be adopted here). Its placements
        still in the consumer are its runs, which the scheduler ends once it is surely gone (its
        requeue jobs fenced), not runs to start here: consuming waits until this executor's
        registration is stored, and what was placed before it is not started. False: stopped first."""
        while not self.first_registered_seq:
            if self.stop.is_set():
                return False
            await pause(self.stop, 0.05)
        # Its first: placements between it and a second (after a loss) are this executor's own.
        self.liveness.replacing(self.first_registered_seq)
        log.warning(
            "this executor replaces another of this node, whose runs it cannot adopt: it starts none of "
            "that one's placements; runs of it still in the log end once it is surely gone, and until "
            "then the node takes no job",
            extra={"node": self.node, "previous": previous, "registered_seq": self.first_registered_seq},
        )
        return True

    def taken_over(self, where: str) -> None:
        """Another executor of this node wrote its heartbeat over this one's: it started while this
        one was frozen or cut off, took the node over, and beats for it. This one stops, stopping its
        jobs first and reporting them (NODE_FAIL; requeue jobs run again): the other cannot adopt
        them, and would be given their cores."""
        if self.taken_over_by is not None:
            return
        self.taken_over_by = where
        log.error(
            "another executor of this node took it over while this one was frozen or cut off: "
            "stopping, and stopping this one's jobs",
            extra={"node": self.node, "other": where, "jobs": sorted(self.running)},
        )
        self.stop.set()

    def beaten(self, then: Callable[[], None]) -> Callable[[], None]:
        """What a heartbeat that got through does: note when, then ``then``."""

        def beat() -> None:
            self.last_beat = time.monotonic()
            then()

        return beat

    async def still_ours(self) -> bool:
        """Is the node's heartbeat still this executor's (or nobody's)? Asked before registering again
        after a loss: one taken over meanwhile must not announce the node (it would hold the node of
        the executor that took it over). Unknown (NATS away) counts as ours."""
        if self._bus is None:
            return True
        try:
            kv = await self._bus.heartbeats()
            entry = await kv.get(subjects.heartbeat_key(self.node))
            beat = heartbeats.decode(entry.value)
        except Exception:
            return True
        if beat.instance not in (None, self.instance):
            self.taken_over(beat.where)
            return False
        return True

    # -- handling ----------------------------------------------------------------------------------
    async def handle(self, event: ev.Event, seq: int = 0, traceparent: str | None = None, deliveries: int = 0) -> None:
        """``seq``: the event's stream sequence (0 when unknown); ``traceparent``: its message's;
        ``deliveries``: how many times the node's consumer has handed it out (0: not known)."""
        match event:
            case ev.JobPlaced(node=node) if node == self.node:
                with traces.starting(event.job_id, event.run, node, traceparent) as carried:
                    await self.start(event, seq, traceparent, carried, deliveries)
            case ev.NodeLost(node=node) if node == self.node:
                self.liveness.node_lost(event, seq)
            case ev.JobCancelRequested(job_id=job_id) if job_id in self.running:
                log.info("cancelling", extra={"job_id": job_id})
                self.running[job_id].kill(cancelled=True)

    def give_up(
        self, event: ev.Event, err: BaseException, deliveries: int, seq: int = 0, traceparent: str | None = None
    ) -> None:
        """A placement that failed every delivery: its job must still end, visibly."""
        if not (isinstance(event, ev.JobPlaced) and event.node == self.node) or self.liveness.stale(seq):
            return
        folder = self.folder(event.job_id, event.run)
        if folder.exists():  # started or finished already: it has or will have its outcome
            return
        message = f"the executor could not handle the placement ({deliveries} tries): {_short(err)}"
        failed = ev.JobFailed(job_id=event.job_id, node=self.node, exit_code=None, message=message, run=event.run)
        try:
            self._make_folder(event.job_id, event.run)
        except OSError as refused:
            # The disk that refused the start (no space, no inodes) refuses the folder too: the outcome
            # still goes out, through the outbox's spare files, with no folder to mark done. Else the
            # job stayed RUNNING for ever and held its cores.
            log.warning(
                "reporting a job's failure without its folder", extra={"job_id": event.job_id, "error": str(refused)}
            )
            # Raises if the outbox refuses it too: the placement is then delivered again (nothing was
            # reported, and nothing on disk would say so after a restart).
            self.outbox.put(failed, traceparent)
            self._given_up.add((event.job_id, event.run))
            return
        self._report(event.job_id, failed, traceparent)

    async def cancel_requested(self, job_id: int) -> bool:
        """Is a cancel of this job stored? Only a JobCancelRequested for this job counts, and only one
        stored after its submission (a job's id is that submission's sequence): anyone may publish
        anything on a cancel subject, also before the job it names exists."""
        seq = job_id + 1
        while True:
            try:
                msg = await self.bus.js.get_msg(self.bus.stream, seq=seq, subject=subjects.cancel_of(job_id), next=True)
            except NotFoundError:
                return False
            try:
                event = ev.decode(msg.data or b"")
            except ValueError:
                event = None
            if isinstance(event, ev.JobCancelRequested) and event.job_id == job_id:
                return True
            if msg.seq is None or msg.seq < seq:  # never loop on an answer that does not move on
                return False
            seq = msg.seq + 1

    def _misfit(self, placement: ev.JobPlaced) -> str | None:
        return misfit(placement, self.settings.cpus, self.settings.memory_mb, self.placements.values())

    def _dying(self) -> list[int]:
        """Jobs whose cores are still held by a run that is being killed (its node declared lost, a
        cancel, its time limit) or that ended and is not yet gone."""
        return [
            job_id
            for job_id, held in self.placements.items()
            if held is not self._starting.get(job_id)
            and ((process := self.running.get(job_id)) is None or process.run != held.run or process.reasons)
        ]

    async def _dying_gone(self) -> bool:
        """Waits, for at most a kill's grace twice and 10 s, until the runs being killed have given
        back their cores; True if there were any. The scheduler frees a lost node's cores at the
        NodeLost, and the node registers again once its killed runs are gone: a placement can come
        in while they die (a restarted executor registers before it reads the NodeLost), and failing
        it for not fitting ended jobs FAILED without running, several at once (review of 2026-12-02)."""
        if not self._dying():
            return False
        loop = asyncio.get_running_loop()
        waited = 2 * self.settings.kill_grace_s + _DYING_EXTRA_S
        deadline = loop.time() + waited
        # Polled: a run starting beside this one leaves the list as it starts, which no event says.
        while self._dying() and loop.time() < deadline and not self.stop.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if (stuck := self._dying()) and not self.stop.is_set():
            # Their processes do not die (stuck in the kernel): every placement on their cores would be
            # refused and run again, here again, until its requeues ran out (Slurm: Kill task failed).
            jobs = ", ".join(map(str, sorted(stuck)[:10]))
            self.self_drain.ask(
                f"kill task failed: job(s) {jobs} still hold their cores {waited:g} s after they were killed"
            )
        return True

    async def lost_after(self, seq: int) -> int:
        """The stream sequence of the first NodeLost of this node stored after ``seq``, 0 when there
        is none: a placement at ``seq`` below it is a run the scheduler has ended."""
        seq += 1
        while True:
            try:
                msg = await self.bus.js.get_msg(self.bus.stream, seq=seq, subject=self._lost_subject, next=True)
            except NotFoundError:
                return 0
            try:
                event = ev.decode(msg.data or b"")
            except ValueError:
                event = None
            if msg.seq is None or msg.seq < seq:  # never loop on an answer that does not move on
                return 0
            if isinstance(event, ev.NodeLost) and event.node == self.node:
                return msg.seq
            seq = msg.seq + 1

    async def _lost_after(self, seq: int) -> bool:
        """Has a NodeLost of this node been stored after the placement at ``seq``? One look-up per
        batch (sent with the others, ``_look_ahead``); one of its own for a placement it does not
        answer."""
        ahead = self._lost_ahead
        if ahead is not None and ahead[0] <= seq:
            lost = await asyncio.shield(ahead[1])
            if lost == 0 or lost > seq:
                return lost > seq
        return await self.lost_after(seq) > seq

    async def submission(self, job_id: int) -> ev.JobSubmitted:
        raw = await self.bus.js.get_msg(self.bus.stream, seq=job_id)
        event = ev.decode(raw.data or b"")
        if not isinstance(event, ev.JobSubmitted):
            raise ValueError(f"stream sequence {job_id} is a {event.type}, not a JobSubmitted")
        return event

    def _superseded(self, placement: ev.JobPlaced, seq: int) -> str | None:
        """Why a placement is a run that is over already, or None: its folder exists (a redelivery),
        a NodeLost came after it, or a later run of the job was placed here."""
        job_id, run = placement.job_id, placement.run
        if self.folder(job_id, run).exists() or (job_id, run) in self._given_up:
            return "placement redelivered; not starting the job again"
        if self.liveness.replaced(seq):
            return "placement for the executor this one replaced: the scheduler ends that run"
        if self.liveness.stale(seq):
            return "placement from before the node was declared lost: the scheduler ended that run"
        if self._latest_rerun(job_id) > run:
            return "placement of an earlier run of a job that ran here again since"
        return None

    def _latest_rerun(self, job_id: int) -> int:
        """The latest run of ``job_id`` with a folder here, 0 when none after its first. Raises
        OSError when the jobs folder cannot be listed (the placement is delivered again)."""
        if self._reruns is None:
            reruns: dict[int, int] = {}
            for path in self.settings.jobs_dir.iterdir():
                key = sv.parse_folder_name(path.name)
                if key is not None and key[1] > reruns.get(key[0], 0):
                    reruns[key[0]] = key[1]
            self._reruns = reruns
        return self._reruns.get(job_id, 0)

    def _make_folder(self, job_id: int, run: int) -> Path:
        folder = self.folder(job_id, run)
        folder.mkdir(parents=True)
        if run > 0 and self._reruns is not None and run > self._reruns.get(job_id, 0):
            self._reruns[job_id] = run
        return folder

    def _never_started(self, placement: ev.JobPlaced, message: str, carried: str | None) -> None:
        """Reports a placement of which nothing ran (its folder made and marked): the scheduler runs
        it again, whether or not it asked to be requeued."""
        failed = ev.JobFailed(
            job_id=placement.job_id,
            node=self.node,
            exit_code=None,
            message=message,
            node_fail=True,
            never_started=True,
            run=placement.run,
        )
        self._report(placement.job_id, failed, carried)

    async def start(
        self,
        placement: ev.JobPlaced,
        seq: int = 0,
        placed: str | None = None,
        carried: str | None = None,
        deliveries: int = 0,
    ) -> None:
        """``placed``: the placement's traceparent (the outcome's span is its child, also after a
        restart); ``carried``: the one the events published from here carry; ``deliveries``: how many
        times the consumer handed it out."""
        job_id, run = placement.job_id, placement.run
        folder = self.folder(job_id, run)
        why = self._superseded(placement, seq)
        if why is None and seq and await self._lost_after(seq):
            # Stored, not yet handled (behind this placement in the consumer, or not fetched yet):
            # the executor was away while the scheduler declared the node lost and ended this run.
            why = "placement from before a NodeLost of this node: the scheduler ended that run"
        if why is not None:
            if (ahead := self._lookups.pop((job_id, run), None)) is not None:
                ahead.cancel()
            log.info(why, extra={"job_id": job_id, "run": run, "seq": seq})
            if deliveries == 1 and self.liveness.replaced(seq) and not folder.exists():
                # Placed for the executor this one replaced, and handed out for the first time now:
                # that one never had it, so nothing of it ran. Said so, it runs again (else it ended
                # NODE_FAIL at the node's loss: a pod restarted within the 30 s, review of 2026-12-02).
                self._make_folder(job_id, run)
                self._supersede(job_id, run)
                self._never_started(
                    placement, "placed for the node's previous executor, which never received it", carried
                )
            return
        # Look-ups first: if they fail, nothing is marked and the redelivered placement starts over.
        ahead = self._lookups.pop((job_id, run), None)
        cancelled, job = await (ahead if ahead is not None else self._lookup(job_id))
        # Before anything is marked: a stop (or a kill) while it waits leaves the placement to be
        # delivered again, to this node's next executor, instead of refused or lost with a folder.
        if not cancelled and self._misfit(placement) is not None and await self._dying_gone() and self.stop.is_set():
            raise StoppedWaiting("the executor stopped while the placement waited for its cores")
        self._make_folder(job_id, run)
        # From here on every path ends in an outcome: the marker stops any redelivery from doing so.
        self._supersede(job_id, run)
        if cancelled:
            self._report(job_id, ev.JobCancelled(job_id=job_id, node=self.node, run=run), carried)
            return
        why = self._misfit(placement)
        if why is not None:
            # The node came back smaller than when the job was placed, say: nothing of it ran, so
            # the scheduler places it again (it ended FAILED, review of 2026-12-02).
            self._never_started(placement, f"placement does not fit this node: {why}", carried)
            log.warning("placement refused", extra={"job_id": job_id, "reason": why})
            return
        # Held from now: placements started together each see the others' cores and memory.
        self.placements[job_id] = placement
        self._starting[job_id] = placement
        try:
            files = envs.job_files(job_id, job)
            process = await self._spawn(folder, job_id, job, placement, files)
        except Exception as err:  # a NUL in a value, a bad path, no such user...: never a stuck job
            self._starting.pop(job_id, None)
            self.self_drain.consider(err)
            if self.placements.get(job_id) is placement:
                del self.placements[job_id]
            message = f"could not start the job: {_short(err)}"
            failed = ev.JobFailed(job_id=job_id, node=self.node, exit_code=None, message=message, run=run)
            self._report(job_id, failed, carried)
            log.warning("job failed to start", extra={"job_id": job_id, "error": str(err)})
            return
        process.run, process.placed_seq, process.requeue = run, seq or None, job.requeue
        process.traceparent = placed
        self.running[job_id] = process
        self._starting.pop(job_id, None)
        # The time of the spawn, not of this line: placements started together resume one by one.
        started = self._started(job_id, process.pid, process.start, run)
        # Its JobStarted goes into the outbox from the job's monitor, which waits for it before the
        # outcome; the record says it is owed until then (a restart queues it again; a copy already
        # in the outbox is stored once, by its Nats-Msg-Id). So the next placement does not wait on
        # this one's disk sync.
        record = sv.ProcessRecord(
            pid=process.pid,
            started=start_time(process.pid),
            start=process.start,
            time_limit_s=job.time_limit_s,
            memory_mb=placement.memory_mb,
            cores=placement.cores,
            announced=False,
            supervised=True,
            placed_seq=process.placed_seq,
            requeue=job.requeue,
            traceparent=placed,
        )
        written: sv.ProcessRecord | None = record
        try:
            with naming(folder):
                sv.write_process(folder, record)
        except OSError as err:  # a restarted executor then finds the job by its command line
            self.self_drain.consider(err)
            log.warning("could not record the job's process", extra={"job_id": job_id, "error": str(err)})
            written = None
        log.info("started", extra={"job_id": job_id, "pid": process.pid, "cores": placement.cores})
        deadline = None if job.time_limit_s is None else process.start + job.time_limit_s
        self._watch(process, started, deadline, written, carried)

    async def _spawn(
        self, folder: Path, job_id: int, job: ev.JobSubmitted, placement: ev.JobPlaced, files: envs.JobFiles
    ) -> JobProcess:
        env = envs.job_environment(self._environment, job_id, job, placement)
        # Last: no value of the job's own replaces it. What finds its processes without a record.
        env[sv.MARK] = sv.mark_of(folder)
        # Its supervisor kills a requeue job once this executor is gone; never another job.
        env.pop(fence_lease.LEASE_ENV, None)
        env.pop(fence_lease.AFTER_ENV, None)
        env.pop(sv.CPUS, None)  # the executor's to set (start_supervisor): else a job chose its own CPUs
        if job.requeue:
            env[fence_lease.LEASE_ENV] = str(self.lease)
            env[fence_lease.AFTER_ENV] = str(self._fence_after_s)
        # The loop thread's own mask: the worker thread's is moved to the job's CPUs while it starts it.
        cpus = envs.host_cpus(placement.cores, sorted(os.sched_getaffinity(0)))
        # Files and the spawn in a worker thread: the event loop goes on with other jobs' ends and
        # reports meanwhile (the spawn, its files and the move to the job's CPUs were a fifth of it).
        child, start = await asyncio.to_thread(self._start_job, folder, job, files, env, cpus)
        return supervised(job_id, folder, child, start, self.settings.kill_grace_s, placement.memory_mb)

    def _protected_with(self, supervisor: Path | None) -> dict[Path, str]:
        """The protected folders, and the compiled supervisor's program: a job that truncated it
        (its output named it) would fail every job after it. Resolved once per program."""
        if supervisor is None:
            return self._protected
        if self._protecting[0] != supervisor:
            program = supervisor.resolve()
            # Built here: the whole folder of builds (another executor's may be beside it). Named
            # beforehand (the image's /usr/local/bin/conductor-job): the program alone.
            cache = compiled.cache_folder()
            where = program.parent if cache is not None and program.parent == cache.resolve() else program
            self._protecting = (supervisor, self._protected | {where: "the job supervisor's program"})
        return self._protecting[1]

    def _start_job(
        self, folder: Path, job: ev.JobSubmitted, files: envs.JobFiles, env: dict[str, str], cpus: set[int]
    ) -> tuple[subprocess.Popen[bytes], float]:
        # Absolute: a restarted executor finds the job by this command line if it died before
        # process.json was written, wherever it runs from.
        script = (folder / "script.sh").absolute()
        with naming(script):
            script.write_text(job.script)
        folders = self._protected_with(self.supervisor)
        make_working_directory(job.working_directory, folders)
        outputs = open_outputs(files, folders)
        try:
            # Only now, with the files open and checked: a job whose start failed before this has no
            # output to keep, whatever is at the paths it named.
            with naming(folder):
                record_files(folder, outputs.record)
            compiled_form = self.supervisor
            try:
                return start_supervisor(
                    script,
                    job.working_directory,
                    env,
                    outputs.stdout_fd,
                    outputs.stderr_fd,
                    cpus,
                    compiled_form,
                    self.supervisor_pins,
                )
            except OSError as err:
                # Only what says the binary itself is gone or unusable (E2BIG, a job's environment too
                # large, names it too, and would fail the shell form the same way).
                if compiled_form is None or err.filename != str(compiled_form) or err.errno not in _NOT_RUNNABLE:
                    raise
                # Gone or changed since it was checked (a job may clear the cache): not worth a job.
                log.warning(
                    "the compiled supervisor cannot be started: jobs start through the shell form from now on",
                    extra={"path": str(compiled_form), "error": str(err)},
                )
                self.supervisor = None
                return start_supervisor(script, job.working_directory, env, outputs.stdout_fd, outputs.stderr_fd, cpus)
        finally:
            outputs.close()  # the child has its own copies

    def _monitor_done(self, task: asyncio.Task[None]) -> None:
        self.monitors.discard(task)
        watched = [j for j, watcher in self.watchers.items() if watcher is task]
        for job_id in watched:
            del self.watchers[job_id]
        if not task.cancelled() and (err := task.exception()) is not None:
            log.error("job monitor failed", exc_info=err, extra={"job_id": watched[0] if watched else None})

    async def monitor(
        self,
        process: JobProcess,
        started: ev.JobStarted | None,
        deadline: float | None,
        record: sv.ProcessRecord | None = None,
        traceparent: str | None = None,
        *,
        hold: bool = True,
    ) -> None:
        """Until the job ends, then its outcome. ``started``: its JobStarted, if still to be queued
        (``record``: the job's process.json, marked announced once it is; ``traceparent``: the one
        it is published with, the placement's by default); ``deadline``: the end of its time limit
        (wall clock); ``hold``: the JobStarted is held back for the start report delay, and goes
        in the outcome of a run that ends within it (only a run this executor started, which
        nothing can have announced yet)."""
        job_id = process.job_id
        # Queued from the job's own task, in the outbox before its outcome can be; while the disk
        # refuses it the job runs on and its time limit counts.
        queued = (
            asyncio.ensure_future(self._announce(process, started, record, traceparent or process.traceparent, hold))
            if started is not None
            else None
        )
        try:
            outcome = await process.wait(deadline)
        except asyncio.CancelledError:  # the executor stops and leaves the job running
            process.release()
            if queued is not None:
                queued.cancel()
            raise
        # Not announced (the run ended within the delay): its start goes out with its outcome.
        unannounced = started if queued is not None and not await queued else None
        if not outcome.reasons and outcome.exit_code is not None:
            # Ended by itself: its group is gone, what left the group is looked for at the next sweep.
            self.ended[process.folder] = process.start
        if self.running.get(job_id) is process:
            del self.running[job_id]
        if (held := self.placements.get(job_id)) is not None and held.run == process.run:
            del self.placements[job_id]
        if process.lost:  # the scheduler ended this run: nothing to report, nothing to take over
            self.outbox.discard(job_id, process.run)
            with contextlib.suppress(OSError):
                sv.mark_done(process.folder, sv.LOST)
            log.info("job killed: its node was declared lost", extra={"job_id": job_id, "run": process.run})
            return
        # The end is its record's mtime, on the file system's coarse clock: a job of a few
        # milliseconds could seem to end before its spawn.
        ended_at = None if outcome.ended_at is None else max(outcome.ended_at, process.start)
        event = outcome_event(
            job_id, self.node, outcome.exit_code, outcome.reasons, ended_at, LOST_SUPERVISOR, process.run, unannounced
        )
        ending = traces.ending(job_id, process.run, self.node, process.traceparent, event.type, process.start)
        with ending as carried:
            # Its output goes to the object store from the outbox, right before this outcome is published.
            await self.finish(job_id, event, traceparent=carried)
            JOBS_FINISHED.labels(state=ev.final_state(event).value).inc()
            log.info("finished", extra={"job_id": job_id, "outcome": event.type, "exit_code": outcome.exit_code})

    async def _announce(
        self,
        process: JobProcess,
        started: ev.JobStarted,
        record: sv.ProcessRecord | None,
        traceparent: str | None,
        hold: bool = True,
    ) -> bool:
        """Queues the job's JobStarted (``hold``: once it has run for CONDUCTOR_START_REPORT_DELAY_S);
        False if it ended first (its outcome then carries its start) or the executor stopped."""
        if hold and (delay := self.settings.start_report_delay_s) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(process.exited), delay)
            if process.exited.done():
                return False
        if not await self.outbox.keep(started, self.stop, traceparent):
            return False
        # A job that has ended is about to be marked done, which says it owes nothing (one rewrite
        # of its record fewer for a short job).
        if record is not None and not record.announced and not process.exited.done():
            try:
                sv.mark_announced(process.folder)
            except (OSError, ValueError) as err:  # a restart queues it again: stored once all the same
                log.warning("could not mark the job announced", extra={"job_id": process.job_id, "error": str(err)})
        return True

    def held(self) -> set[Key]:
        """The runs this executor holds (running, or starting): their folders stay."""
        runs = {(job_id, process.run) for job_id, process in self.running.items()}
        return runs | {(job_id, placement.run) for job_id, placement in self.placements.items()}

    def owed(self) -> set[Key]:
        """The runs the outbox still holds an event of (blocking: it lists the outbox's folder; raises
        OSError when it cannot)."""
        return self.outbox.runs_owed()

    async def police_memory(self, stop: asyncio.Event) -> None:
        """Sample every running job's memory; a job over its memory_per_node is killed (OUT_OF_MEMORY)."""
        while not stop.is_set():
            try:
                await self._police_once()
            except Exception:  # one bad sample must not end the policing of every job
                log.exception("memory sampling failed")
            await pause(stop, self.settings.memory_poll_s)

    async def _police_once(self) -> None:
        running = list(self.running.values())
        if not running:
            return
        sampled = await asyncio.to_thread(trees_memory_mb, [process.pid for process in running])
        for process in running:
            used = sampled.get(process.pid, 0.0)
            if used > process.memory_limit_mb and not process.out_of_memory:
                log.warning(
                    "over its memory limit; killing",
                    extra={"job_id": process.job_id, "memory_mb": round(used), "limit_mb": process.memory_limit_mb},
                )
                process.kill(out_of_memory=True)

    # -- the consumer ------------------------------------------------------------------------------
    async def consume(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        """Until ``stop``: no NATS error ends this loop; it logs a line, backs off and goes on.
        Messages come in batches and are handled and acked one by one, in stream order; the look-ups
        of a batch's placements are sent together as it arrives (``_look_ahead``)."""
        reader = PlacementReader(sub)
        backoff = self.backoff()
        while not stop.is_set():
            try:
                msgs = await reader.fetch(_BATCH, 1.0)
            except (NatsTimeout, TimeoutError):
                continue
            except Exception as err:
                raise_if_closed(self._bus, err)  # nats-py will not reopen it: end, to be started again
                delay = backoff.next()
                log.warning("fetching placements failed; retrying", extra={"error": _short(err), "retry_in_s": delay})
                await pause(stop, delay)
                continue
            backoff.reset()
            if time.monotonic() - self.last_beat > 2 * self.settings.heartbeat_s and not await self.still_ours():
                # Frozen or cut off, and the node taken over meanwhile: these messages are the other
                # executor's (a cancel taken here would never reach the job it names).
                for msg in msgs:
                    await _settle(msg.nak())
                break
            self._look_ahead(msgs)
            try:
                await self._take_all(msgs)
            finally:
                # What a placement handled otherwise (a redelivery, a stop) did not wait for.
                for lookup in self._lookups.values():
                    lookup.cancel()
                self._lookups.clear()
                if self._cancels_ahead is not None:
                    self._cancels_ahead.cancel()
                    self._cancels_ahead = None
                if self._lost_ahead is not None:
                    self._lost_ahead[1].cancel()
                    self._lost_ahead = None

    async def _take_all(self, msgs: list[Msg]) -> None:
        """A batch in stream order, except that the placements between two other messages start
        together (up to ``_STARTS_AT_ONCE`` at a time): a NodeLost or a cancel request is handled once
        every placement before it has started, and before any placement after it."""
        gate = asyncio.Semaphore(_STARTS_AT_ONCE)

        async def take(msg: Msg) -> None:
            async with gate:
                await self.take(msg)

        together: list[Msg] = []
        for msg in [*msgs, None]:
            if msg is not None and msg.subject == self._placed_subject:
                together.append(msg)
                continue
            if together:
                async with asyncio.TaskGroup() as group:
                    for placement in together:
                        group.create_task(take(placement))
                together = []
            if msg is not None:
                await self.take(msg)

    def _look_ahead(self, msgs: list[Msg]) -> None:
        """The cancel and submission look-ups of every placement of a batch, sent at once: each
        placement then waits for answers that are on their way, not for two round trips of its own.
        Sent after every message of the batch was stored, as when each is sent at its placement's
        turn: a cancel stored after the look-up comes through the consumer after the placement."""
        placed: list[tuple[Msg, ev.JobPlaced]] = []
        for msg in msgs:
            try:
                event = ev.decode(msg.data)
            except Exception:  # ``take`` says why
                continue
            if (
                isinstance(event, ev.JobPlaced)
                and event.node == self.node
                and msg.subject == subjects.subject_for(event)
            ):
                placed.append((msg, event))
        if not placed:
            return
        # One look-up for the whole batch says that none of its jobs has a cancel stored (the common
        # case); only when a cancel of any job is stored after the earliest of them does each job
        # look its own up. A job's cancel is stored after its submission, whose sequence is its id.
        # (At least 1: a job id below it names no submission, and must not fail its batch's look-ups.)
        earliest = max(1, min(event.job_id for _, event in placed) + 1)
        self._cancels_ahead = cancels = asyncio.ensure_future(self._any_cancel_from(earliest))
        cancels.add_done_callback(_retrieved)
        first = 0
        for msg, event in placed:
            lookup = asyncio.ensure_future(self._lookup(event.job_id, cancels))
            lookup.add_done_callback(_retrieved)
            self._lookups[event.job_id, event.run] = lookup
            with contextlib.suppress(Exception):
                first = first or msg.metadata.sequence.stream
        if first:
            lost = asyncio.ensure_future(self.lost_after(first))
            lost.add_done_callback(_retrieved)
            self._lost_ahead = (first, lost)

    async def _lookup(self, job_id: int, cancels: asyncio.Future[bool] | None = None) -> tuple[bool, ev.JobSubmitted]:
        """Is a cancel of the job stored, and its submission. ``cancels``: whether any cancel is stored
        after the earliest submission of the job's batch (False: none of this job either)."""
        cancelled, job = await asyncio.gather(self._cancel_stored(job_id, cancels), self.submission(job_id))
        return cancelled, job

    async def _cancel_stored(self, job_id: int, cancels: asyncio.Future[bool] | None) -> bool:
        if cancels is not None and not await asyncio.shield(cancels):
            return False
        return await self.cancel_requested(job_id)

    async def _any_cancel_from(self, seq: int) -> bool:
        """Is any cancel request (of any job) stored at or after stream sequence ``seq``?"""
        try:
            await self.bus.js.get_msg(self.bus.stream, seq=seq, subject=subjects.CANCEL_ALL, next=True)
        except NotFoundError:
            return False
        return True

    async def take(self, msg: Msg) -> None:
        try:
            seq, deliveries = msg.metadata.sequence.stream, msg.metadata.num_delivered
        except Exception:
            seq, deliveries = 0, 1
        try:
            event = ev.decode(msg.data)
        except Exception as err:  # it will never decode: one delivery is enough to know
            log.error("undecodable message dropped", extra={"seq": seq, "subject": msg.subject, "error": _short(err)})
            await _settle(msg.term())
            return
        if msg.subject != subjects.subject_for(event):
            # Not what its subject says (a cancel of job 5 on cancel.7): acting on either would be a guess.
            log.error("message on another event's subject dropped", extra={"seq": seq, "subject": msg.subject})
            await _settle(msg.term())
            return
        traceparent = tracing.of_headers(msg.headers)
        try:
            await self.handle(event, seq, traceparent, deliveries)
        except Exception as err:
            self.self_drain.consider(err)
            about = {"seq": seq, "subject": msg.subject, "job_id": getattr(event, "job_id", None)}
            if transient(err) or deliveries < self.settings.max_deliveries:
                log.warning(
                    "handling failed; will retry", extra=about | {"error": _short(err), "deliveries": deliveries}
                )
                delay = min(self.settings.retry_max_s, self.settings.retry_first_s * 2 ** min(deliveries - 1, 30))
                await _settle(msg.nak(delay=delay))
                return
            log.error(
                "message failed every delivery; giving up",
                extra=about | {"error": _short(err), "deliveries": deliveries},
            )
            try:
                self.give_up(event, err, deliveries, seq, traceparent)
            except Exception:
                # Its job would end nowhere: the placement comes back, to start or be given up then.
                log.exception("could not report the job of a message given up; delivering it again", extra=about)
                await _settle(msg.nak(delay=self.settings.retry_max_s))
                return
            await _settle(msg.term())
            return
        await _settle(msg.ack())

    async def shutdown(self, leave_jobs: bool = False) -> None:
        """A stop leaves the jobs running under their supervisors, for the next start to take over;
        with ``stop_jobs_on_exit`` it stops them and reports how they ended. ``leave_jobs``: not a
        stop but an end for a restart (a connection closed for good): the jobs run on whatever
        ``stop_jobs_on_exit`` says, as when the executor dies. Taken over by another executor of the
        node: the jobs are stopped and reported whatever the setting (``taken_over``)."""
        if self.taken_over_by is not None:
            for process in list(self.running.values()):
                process.kill(replaced=True)
        elif self.settings.stop_jobs_on_exit and not leave_jobs:
            for process in list(self.running.values()):
                process.kill(stopped=True)
        else:
            for task in list(self.watchers.values()):
                task.cancel()
        for task in list(self.monitors):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, self.settings.kill_grace_s + 5)


def _retrieved(lookup: asyncio.Future[Any]) -> None:
    """A look-up nobody waited for (its placement was handled otherwise) fails silently: the one
    that waits for it gets its error."""
    if not lookup.cancelled():
        lookup.exception()


def _run(event: ev.Event) -> int:
    return int(getattr(event, "run", 0))


async def _settle(reply: Awaitable[None]) -> None:
    """Ack, nak or term; if NATS is away the message is simply delivered again later."""
    try:
        await reply
    except Exception as err:
        log.warning("could not acknowledge a message", extra={"error": _short(err)})


# How much longer than twice the kill's grace a placement waits for killed runs to give their cores back.
_DYING_EXTRA_S = 10.0

# nats-server's default ``sync_interval``: how long an acknowledged write may stay unsynced.
_NATS_SYNC_S = 120.0


class StoppedWaiting(Exception):
    """A placement left unhandled by a stop: its message is not acknowledged, so it comes back."""


async def run(settings: ExecutorSettings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    node_folder = settings.state_dir / settings.node
    lock = await twins.lock_node_folder(node_folder)
    try:
        await _run_locked(settings, stop, twins.instance_id(node_folder))
    finally:
        os.close(lock)


async def _run_locked(settings: ExecutorSettings, stop: asyncio.Event, instance: str) -> None:
    executor = Executor(settings, stop, instance)
    executor.supervisor, executor.supervisor_pins = await _job_supervisor(settings, stop)
    if stop.is_set():
        return
    # Both only write the outbox: leftovers are killed and owed events kept even while NATS is away.
    await executor.recover()
    await executor.register()
    # From the start, before NATS answers: a silence as long as node_lost_after_s fences the node.
    heartbeat = Heartbeat(
        executor.registration,
        settings.heartbeat_s,
        settings.node_lost_after_s,
        executor.liveness.fence,
        on_beat=executor.beaten(fence_lease.touched(executor.lease)),
        instance=instance,
        on_replaced=executor.taken_over,
    )
    beating = asyncio.create_task(heartbeat.run(lambda: executor._bus, executor.stopped))
    # Needs no NATS: from the start, and once more at the end for the jobs that ended since the last.
    scanning = asyncio.create_task(sweep_ended(executor.ended, settings.leftover_scan_s, stop))
    if settings.job_retention_s < _NATS_SYNC_S:
        log.warning(
            "job folders kept less than nats-server's default sync interval: a crash of the NATS host "
            "may lose acks that recent, and a placement whose folder went would run again",
            extra={"job_retention_s": settings.job_retention_s, "sync_interval_s": _NATS_SYNC_S},
        )
    try:
        await _run_connected(settings, executor, stop, instance, heartbeat)
    finally:
        if executor.taken_over_by is not None and executor.running:
            # Taken over before its consumer ran (while it subscribed or caught up): the jobs it
            # adopted are stopped all the same; their reports wait in the outbox.
            await executor.shutdown()
        executor.stopped.set()
        scanning.cancel()
        if executor.ended:
            try:
                await asyncio.wait_for(asyncio.to_thread(kill_left_by_ended, dict(executor.ended)), 10)
            except Exception:  # stopping all the same
                log.exception("looking for what ended jobs left running failed")
        await cancel_until_done(beating)
    if executor.taken_over_by is not None:
        raise twins.TwinExecutor(f"another executor of this node took it over ({executor.taken_over_by})")


async def _checked(bus: Bus, key: str, instance: str, watch_s: float, first: bytes) -> tuple[str, twins.TookOver]:
    """Why this executor must not run (another of its node does), or ""; and how it took the node's
    heartbeat over (retried while NATS is away)."""
    try:
        return "", await twins.refuse_twin(await bus.heartbeats(), key, instance, watch_s, first)
    except twins.TwinExecutor as err:
        return str(err), twins.TookOver(None, None)


# What exec says of a program that is gone, not ours to run, or not a program (any more).
_NOT_RUNNABLE = frozenset({errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ETXTBSY, errno.ENOTDIR, errno.ELOOP})


async def _job_supervisor(settings: ExecutorSettings, stop: asyncio.Event) -> tuple[Path | None, bool]:
    """The compiled supervisor, built (once per machine) and checked in a thread, and whether it moves
    itself to a job's CPUs (``compiled.pins``); a stop meanwhile ends the build or the check at once."""
    cancel = threading.Event()
    stopping = asyncio.ensure_future(stop.wait())
    stopping.add_done_callback(lambda _: cancel.set())
    try:
        path = await asyncio.to_thread(compiled.resolve, settings.job_supervisor, settings.state_dir, cancel)
        if path is None:
            return None, False
        pins = await asyncio.to_thread(compiled.pins, path, cancel)
    except compiled.Cancelled:
        return None, False
    finally:
        stopping.cancel()
    if not pins:  # one built before it could: jobs are pinned by moving the thread that starts them
        log.info("the job supervisor does not move itself to a job's CPUs", extra={"path": str(path)})
    return path, pins


async def _run_connected(
    settings: ExecutorSettings, executor: Executor, stop: asyncio.Event, instance: str, heartbeat: Heartbeat
) -> None:
    bus = await retrying(
        "connecting to NATS",
        lambda: connect(
            settings.nats_url, name=f"conductor-executor-{settings.node}", replicas=settings.stream_replicas
        ),
        stop,
        executor.backoff(),
    )
    if bus is None:
        return
    try:
        # Before this executor's own heartbeat is written (it waits for ``_bus``), so that a beat seen
        # meanwhile is another's. NATS away: the check is tried again, as is everything else here.
        watch_s = 2.5 * settings.heartbeat_s + 1
        key = subjects.heartbeat_key(settings.node)
        checked = await retrying(
            "looking for another executor of this node",
            lambda: _checked(bus, key, instance, watch_s, executor.heartbeat_value()),
            stop,
            executor.backoff(),
            bus,
        )
        if checked is None:
            return
        refused, took = checked
        if refused:
            raise twins.TwinExecutor(refused)
        replaced = took.replaced
        # The heartbeat's next beats are written over this first one, never blindly: one frozen just
        # after its start and thawed once another took the node over would write over that one's beat
        # and win the node back from it (review of 2026-12-02).
        heartbeat.written(took.revision)
        executor._bus = bus
        # The consumer exists before the outbox may announce the node, so it cannot miss a placement;
        # a new one starts at new messages, so placements for an earlier node of the same name are
        # not replayed.
        sub = await retrying(
            "subscribing to placements", lambda: subscribe(bus, settings.node), stop, executor.backoff(), bus
        )
        if sub is None:
            return
        if not await retrying(
            "looking for a loss of the node read elsewhere", executor.liveness.catch_up, stop, executor.backoff(), bus
        ):
            return
        publisher = asyncio.create_task(executor.outbox.run())
        if replaced and not await executor.replacing(replaced):
            publisher.cancel()
            return
        police = asyncio.create_task(executor.police_memory(stop))
        sweep = FolderSweep(settings.jobs_dir, settings.job_retention_s)
        sweeping = asyncio.create_task(
            keep_bounded(
                sweep, bus, durable_name(settings.node), executor.held, executor.owed, settings.job_sweep_s, stop
            )
        )
        closed = False
        try:
            await executor.consume(sub, stop)
        except ConnectionClosedForGood:
            closed = True
            raise
        finally:
            police.cancel()
            sweeping.cancel()
            await executor.self_drain.close()
            await executor.shutdown(leave_jobs=closed)
            # On a connection closed for good nothing more goes out: no use waiting for it.
            if closed_for_good(bus):
                drained = not executor.outbox.pending()
            else:
                drained = await executor.outbox.drained(_DRAIN_ON_STOP_S)
            if not drained:
                log.warning("stopping with events still in the outbox; they go out at the next start")
            executor.stopped.set()
            publisher.cancel()
    finally:
        try:
            await bus.close()
        except Exception as err:  # closing a connection to a server that is gone can fail; nothing is lost
            log.warning("closing the NATS connection failed", extra={"error": _short(err)})
