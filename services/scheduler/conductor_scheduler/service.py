"""The scheduler service around the pure core. One cycle:

    load   - a pull consumer (quick_reader.QuickLogReader) replays the stream from its snapshot or the
             start, then follows it;
    fold   - every event goes through ``evolve`` into ``ClusterState``;
    decide - once caught up (nothing pending) and while holding the lease, ``decide(state)``;
    publish- the decisions in atomic batches of up to 1,000, the first fenced on the last scheduler
             decision folded, each next one on the last of the batch before; a rejection means another
             scheduler decided meanwhile, so we keep folding and decide again from the newer state.

It does not decide again until its own decisions have come back through the fold, so the state it
decides from always includes everything it has already published.

Nothing but a stop ends the loop, or a NATS connection nats-py closed for good (``ConnectionClosedForGood``,
conductor_platform/closed.py: the process ends, for its supervisor to start it again, from its
snapshot): an event it cannot decode or fold is logged, counted and skipped (the fold goes on), and a
failure to read the stream (NATS away, the consumer gone) is logged and followed by reading again
from the sequence after the last one folded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform import tracing
from conductor_platform.bus import (
    DUPLICATE_IN_BATCH,
    MAX_BATCH,
    BatchRefused,
    Bus,
    FencedOut,
    LogReader,
    connect,
    next_batch,
)
from conductor_platform.closed import LogReplaced, raise_if_closed
from conductor_platform.quick_reader import quick_read_from, stream_seq
from conductor_platform.retry import Backoff, Stopped, or_stop
from conductor_platform.tasks import cancel_until_done
from conductor_platform.which_log import log_identity, other_log
from conductor_scheduler import allocator, delivered, history, shrink, snapshot, traces
from conductor_scheduler.gauges import Cluster
from conductor_scheduler.lease import Lease
from conductor_scheduler.liveness import Liveness, connection_of, watch
from conductor_scheduler.policy import decide_losing
from conductor_scheduler.settings import SchedulerSettings
from conductor_scheduler.state import ClusterState, evolve

log = logging.getLogger("conductor.scheduler")

SKIPPED_EVENTS = Counter(
    "conductor_scheduler_skipped_events", "Events in the log the scheduler could not decode or fold, and skipped"
)
# Decisions this process published, never those it folds from the log (a restart replays them all).
PLACEMENTS = Counter("conductor_scheduler_placements", "Jobs placed on a node by this scheduler")
SUBMIT_TO_PLACED = Histogram(
    "conductor_submit_to_placed_seconds",
    "From a job's submission to its placement by this scheduler",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
DECIDE_SECONDS = Histogram("conductor_scheduler_decide_seconds", "Time to decide from the folded state")
LAG = Gauge("conductor_scheduler_lag_events", "Events in the log this scheduler has not folded yet")
FENCING_REJECTIONS = Counter(
    "conductor_scheduler_fencing_rejections",
    "Decisions of this scheduler the log refused because another scheduler had decided meanwhile",
)
_NAME = "conductor-scheduler"
# nats-server stages every atomic batch of a file-backed stream in a file store of its own (a folder,
# its metadata, a message block: ~1.1 ms of its CPU per batch here, 44% of its CPU in bench/throughput.py
# when each cycle went out as a batch), where a fenced publish costs it ~0.11 ms. A cycle of fewer
# decisions than this goes out one fenced publish at a time.
BATCH_FROM = 12
CLUSTER = Cluster()
REGISTRY.register(CLUSTER)


class Scheduler:
    def __init__(self, bus: Bus, settings: SchedulerSettings, lease: Lease | None) -> None:
        self.bus, self.settings, self.lease = bus, settings, lease
        self.state = ClusterState()
        self.liveness = Liveness(settings.node_lost_after_s, time.monotonic)
        self.awaiting_seq = 0  # our newest published decision, not yet folded back
        self.snapshot_seq, self.snapshot_at = 0, 0.0
        # A log that moves more slowly than snapshot_every_events still gets one by then.
        self.snapshot_due = time.monotonic() + settings.snapshot_max_age_s
        self.log_identity = ""  # the stream's creation time: a snapshot says which log it folded
        self.uploading: asyncio.Task[None] | None = None
        self.placed = 0
        self.skipped = 0
        self.folded = 0  # messages this process read from the log (after its snapshot, if any)
        self.until_shrink = shrink.EVERY  # events to fold before the fold's dicts are looked at

    def fold(self, seq: int, subject: str, event: ev.Event, traceparent: str | None = None) -> None:
        evolve(self.state, seq, event, by_scheduler=subjects.is_scheduler_subject(subject), traceparent=traceparent)
        self.until_shrink -= 1
        if not self.until_shrink:
            self.shrink()
        if isinstance(event, ev.NodeRegistered):  # a node that registers is alive, heartbeat or not yet
            self.liveness.heard_from(event.node)

    def fold_message(self, seq: int, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        """Fold one message of the stream; one that cannot be decoded or folded is skipped. Of its
        ``headers`` only a valid traceparent is kept (a plain string: the fold knows no tracing)."""
        self.folded += 1
        try:
            event = ev.decode(data)
        except Exception as err:
            self._skip(seq, subject, "decoded", err)
            return
        try:
            self.fold(seq, subject, event, tracing.of_headers(headers))
        except Exception as err:
            # ``evolve`` changes the state in place, so this event may be half applied: we do not
            # try to undo it (the fold keeps its own invariants), we say so.
            self._skip(seq, subject, "folded", err)

    def shrink(self) -> None:
        self.until_shrink = shrink.EVERY
        shrink.shrink(self.state)

    def _skip(self, seq: int, subject: str, failed: str, err: Exception) -> None:
        self.skipped += 1
        SKIPPED_EVENTS.inc()
        log.error(
            "event at stream seq %d could not be %s; skipped",
            seq,
            failed,
            extra={"seq": seq, "subject": subject, "error": f"{type(err).__name__}: {err}"[:500]},
        )
        # The message is in the log whether we can read it or not. Counting it as folded keeps the
        # fencing token equal to the server's last scheduler-subject sequence (else every decision is
        # rejected from now on) and lets a decision we await past it be seen as folded.
        self.state.last_seq = max(self.state.last_seq, seq)
        if subjects.is_scheduler_subject(subject):
            self.state.last_scheduler_seq = max(self.state.last_scheduler_seq, seq)

    async def leads(self) -> bool:
        return True if self.lease is None else await self.lease.tick()

    async def keep_lease(self) -> None:
        """Renew a lease we hold while catching up: folding a burst (100k submissions) can outlast the
        lease, and a leader that is only behind must not lose it (nor a standby take it) for that."""
        if self.lease is not None and self.lease.held:
            await self.lease.tick()

    async def decide_and_publish(self) -> None:
        if self.state.last_seq < self.awaiting_seq:
            return
        paused_at = time.monotonic()
        lost = [
            await delivered.paused_at(self.bus, e) for e in self.liveness.silent(self.state, connection_of(self.bus))
        ]
        try:
            await self._decide_and_publish(lost, paused_at)
        finally:
            for e in lost:
                if e.delivered is not None:
                    await delivered.resume(self.bus, e.node)

    async def _decide_and_publish(self, lost: list[ev.NodeLost], paused_at: float) -> None:
        with DECIDE_SECONDS.time():
            decided = decide_losing(
                self.state,
                {e.node for e in lost},
                queue_depth=self.settings.queue_depth,
                max_requeues=self.settings.max_requeues,
            )
            decisions = [*delivered.fresh(lost, paused_at, time.monotonic()), *decided]
        expected = self.state.last_scheduler_seq
        # A cycle's decisions go as atomic batches, each fenced on the decision stored last: one round
        # trip per thousand decisions, and a batch is stored whole or refused whole.
        for start in range(0, len(decisions), MAX_BATCH):
            chunk = decisions[start : start + MAX_BATCH]
            try:
                expected = await self._publish_chunk(chunk, expected)
            except FencedOut:
                FENCING_REJECTIONS.inc()
                log.info("fenced out: another scheduler decided; refolding", extra={"expected": expected})
                return

    async def _publish_chunk(self, chunk: Sequence[ev.Event], expected: int) -> int:
        """Publish ``chunk`` in one fenced batch, or one by one when it is small; the sequence of its
        last decision stored. What was stored is accounted for as it is, also when a later decision
        of the chunk is fenced out (``FencedOut`` then ends the cycle)."""
        with contextlib.ExitStack() as spans:
            messages = []
            for decision in chunk:
                # Each decision about a job continues the trace of the job's submission; its span
                # lasts until the batch that carries it is stored.
                span = traces.span_of(self.state, decision)
                traceparent = spans.enter_context(tracing.span(span.name, span.parent, span.attributes))
                messages.append((decision, tracing.headers(traceparent)))
            if len(messages) >= BATCH_FROM:
                try:
                    expected = await self.bus.publish_fenced_batch(messages, expected)
                except BatchRefused as err:
                    if err.err_code != DUPLICATE_IN_BATCH:
                        raise
                    # A batch is refused whole for one message id the stream has already (where a
                    # single publish is acknowledged as a duplicate): one by one, as the stream takes them.
                    log.warning("a decision's id was stored already; publishing one by one", extra={"error": str(err)})
                else:
                    self._stored(chunk, expected)
                    return expected
            for decision, headers in messages:
                expected = await self.bus.publish_fenced(decision, expected, headers)
                self._stored([decision], expected)
            return expected

    def _stored(self, decisions: Sequence[ev.Event], last_seq: int) -> None:
        self.awaiting_seq = last_seq
        for decision in decisions:
            self._published(decision)

    def _published(self, decision: ev.Event) -> None:
        if isinstance(decision, ev.NodeLost):
            log.warning("node lost", extra={"node": decision.node, "reason": decision.reason})
        if isinstance(decision, ev.JobPlaced):
            self.placed += 1
            PLACEMENTS.inc()
            job = self.state.pending.get(decision.job_id)  # our decisions are not folded back yet
            if job is not None and job.submitted_at:
                SUBMIT_TO_PLACED.observe(max(0.0, time.time() - job.submitted_at))
            log.info("placed", extra={"job_id": decision.job_id, "node": decision.node, "cores": decision.cores})

    async def restore(self) -> None:
        """Start from the newest snapshot, if there is a good one (else the whole log is replayed)."""
        try:
            restored = await snapshot.restore(self.bus)
        except Exception as err:
            log.warning(
                "reading the snapshot failed; replaying the log", extra={"error": f"{type(err).__name__}: {err}"}
            )
            return
        if restored is not None:
            self.state = restored
            self.snapshot_seq = restored.last_seq
            log.info("started from a snapshot", extra={"seq": restored.last_seq})

    async def same_log(self) -> None:
        """``LogReplaced`` unless the log is still the one folded: read again after a failure (NATS
        restarted, the stream deleted), it may be another one, and following it from the folded
        position skipped its events and mixed the two into the next snapshot (review of 2026-12-02:
        126 jobs pending for good, a fencing token never matched)."""
        info = await self.bus.js.stream_info(self.bus.stream)
        if why := other_log(info, self.log_identity or None, self.state.last_seq):
            raise LogReplaced(f"not the log this scheduler folded: {why}")

    def maybe_snapshot(self) -> None:
        """Encode a snapshot now (the state does not change while we do) and upload it meanwhile."""
        settings, now = self.settings, time.monotonic()
        behind = self.state.last_seq - self.snapshot_seq
        if behind < settings.snapshot_every_events and not (behind and now >= self.snapshot_due):
            return
        if now - self.snapshot_at < settings.snapshot_min_interval_s or self.uploading is not None:
            return
        self.snapshot_at, self.snapshot_due = now, now + settings.snapshot_max_age_s
        seq = self.state.last_seq
        data = snapshot.dump(self.state, self.log_identity)

        async def upload() -> None:
            try:
                await snapshot.upload(self.bus, data)
                self.snapshot_seq = seq
                log.info("snapshot stored", extra={"seq": seq, "bytes": len(data)})
            except Exception as err:
                log.warning("storing a snapshot failed", extra={"error": f"{type(err).__name__}: {err}"})
            finally:
                self.uploading = None

        self.uploading = asyncio.create_task(upload())

    async def fold_archived(self, stop: asyncio.Event, backoff: Backoff) -> bool:
        """On a compacted log, what the snapshot does not cover comes from the archive; until the
        archive holds it (or a snapshot that covers it is stored), nothing is decided. False: stopped."""
        while not stop.is_set():
            try:
                folded = await history.fold_archived(
                    self.bus, Path(self.settings.archive_dir), self, self.state.last_seq
                )
            except Exception as err:
                raise_if_closed(self.bus, err)
                log.warning("reading the archive failed; retrying", extra={"error": f"{type(err).__name__}: {err}"})
                folded = None
            if folded is not None:
                self.state.last_seq = max(self.state.last_seq, folded)
                return True
            await backoff.wait(stop)
            await self.restore()
        return False

    async def follow(self) -> LogReader:
        """A subscription from the sequence after the last one folded. A connection closed for good
        raises ``ConnectionClosedForGood``: nats-py never opens it again, and a new connection in this
        process would leave the lease, the heartbeat watch and a snapshot upload on the old one."""
        raise_if_closed(self.bus)
        return await quick_read_from(self.bus, self.state.last_seq + 1)


async def _start(settings: SchedulerSettings, stop: asyncio.Event) -> tuple[Bus, Lease | None] | None:
    """Connect and find the lease bucket, for as long as it takes (JetStream may be starting or
    away): exiting would leave the restarts to a supervisor, later and later. None when stopped."""
    backoff = Backoff(settings.retry_first_s, settings.retry_max_s)
    while not stop.is_set():
        bus: Bus | None = None
        try:
            bus = await or_stop(connect(settings.nats_url, name=_NAME, replicas=settings.stream_replicas), stop)
            lease = None
            if settings.use_lease:
                kv = await or_stop(bus.leases(settings.lease_ttl_s), stop)
                holder = settings.scheduler_id or f"scheduler-{uuid.uuid4().hex[:8]}"
                lease = Lease(kv, subjects.SCHEDULER_LEASE_KEY, holder, settings.lease_ttl_s)
            return bus, lease
        except Stopped:
            if bus is not None:
                await bus.close()
            return None
        except Exception as err:
            log.warning("starting failed; retrying", extra={"error": f"{type(err).__name__}: {err}"})
            if bus is not None:
                await bus.close()
            await backoff.wait(stop)
    return None


async def run(settings: SchedulerSettings, stop: asyncio.Event | None = None) -> Scheduler | None:
    """Folds and decides until ``stop``; returns the scheduler (None if stopped before it connected)."""
    stop = stop or asyncio.Event()
    started = await _start(settings, stop)
    if started is None:
        return None
    bus, lease = started
    scheduler = Scheduler(bus, settings, lease)
    heartbeats = asyncio.create_task(
        watch(lambda: scheduler.bus, scheduler.liveness, stop, Backoff(settings.retry_first_s, settings.retry_max_s))
    )
    sub: LogReader | None = None  # subscribed in the loop, so also retried there
    give_back = allocator.GiveBack()
    with contextlib.suppress(Exception):  # without it, snapshots are refused: a full replay, as before
        scheduler.log_identity = await log_identity(bus)
    await scheduler.restore()
    backoff = Backoff(settings.retry_first_s, settings.retry_max_s)
    if not await scheduler.fold_archived(stop, backoff):
        return scheduler
    log.info("scheduler started; replaying the log", extra={"from_seq": scheduler.state.last_seq + 1})
    try:
        while not stop.is_set():
            try:
                if sub is None:
                    await scheduler.same_log()
                    sub = await scheduler.follow()
                    log.info("following the log", extra={"from_seq": scheduler.state.last_seq + 1})
                msgs = await next_batch(sub, 1000, wait_s=0.5)
            except LogReplaced:
                raise
            except Exception as err:  # NATS away or the consumer gone: read again from what we folded
                if stop.is_set():
                    break
                raise_if_closed(scheduler.bus, err)  # nats-py will not reopen it: end, to be started again
                log.warning("reading the log failed; retrying", extra={"error": f"{type(err).__name__}: {err}"})
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                    sub = None
                await backoff.wait(stop)
                continue
            backoff.reset()
            if not msgs:
                scheduler.shrink()  # quiet: the last jobs that ended are followed by no event
                give_back.quiet()
            else:
                give_back.busy()
            for msg in msgs:
                scheduler.fold_message(stream_seq(msg), msg.subject, msg.data, msg.headers)
            CLUSTER.refresh(scheduler.state)
            if msgs:
                LAG.set(msgs[-1].metadata.num_pending)
            if msgs and msgs[-1].metadata.num_pending > 0:
                await scheduler.keep_lease()
                continue  # not caught up: decide only from the whole log
            try:
                if await scheduler.leads():
                    await scheduler.decide_and_publish()
                    scheduler.maybe_snapshot()
            except Exception as err:  # NATS away or slow: keep the state, try again shortly
                raise_if_closed(scheduler.bus, err)
                log.exception("deciding failed; retrying")
                await asyncio.sleep(1)
    finally:
        # Each step on its own: NATS may be the reason we stop, and the rest must still be let go.
        await cancel_until_done(heartbeats)  # stop may not be set: the loop ended by a failure
        if scheduler.uploading is not None:  # a snapshot half stored is never used: let it finish
            with contextlib.suppress(Exception):
                await asyncio.wait_for(scheduler.uploading, 10)
        if lease is not None:
            await lease.release()  # logs its own failure
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        try:
            await scheduler.bus.close()
        except Exception as err:  # closing a connection to a server that is gone can fail; nothing is lost
            log.warning("closing the NATS connection failed", extra={"error": f"{type(err).__name__}: {err}"})
    return scheduler
