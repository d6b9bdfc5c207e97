"""What an executor does when its node is, or may have been, declared lost: nothing runs twice.

- **NodeLost** (the scheduler's, on ``conductor.sched.node.<node>.lost``, read by the executor's own
  consumer in stream order with its placements): in the fold, every job placed on the node before the
  NodeLost and still running then has ended (NODE_FAIL, or requeued to run again, maybe elsewhere).
  So the executor kills exactly those runs: the ones whose placement's stream sequence is below the
  NodeLost's. It reports nothing for them (their outcome is decided), drops what it still owed about
  them, marks them (``kill`` record ``lost``) so that a restart finishes the kill and reports nothing,
  and once they are gone registers again so the node takes work. A placement below the highest
  NodeLost seen (a redelivery) is not started: that run is over too. The mark survives restarts.
  Nor is one below a NodeLost stored but not handled yet (``Executor.lost_after``, one look-up per
  batch): an executor frozen or cut off while the node was declared lost would otherwise start, on
  its return, runs the scheduler had requeued elsewhere, and kill them only at the NodeLost's turn.
  Counting by sequence, not "since my registration", is what makes an old NodeLost read after a
  restart right: it ends the runs placed before it (the fold did) and no run placed after.
- **Self-fencing**: an executor that could not write its heartbeat for ``node_lost_after_s`` cannot
  know whether it was declared lost; it kills its jobs that asked to be requeued (they may run
  elsewhere by now) and lets the others run (if the node was declared lost they are NODE_FAIL in the
  log whatever they do; if not, they finish normally). A fenced job ends NODE_FAIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from nats.js.errors import NotFoundError

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor import supervision as sv
from conductor_executor.process import JobProcess

if TYPE_CHECKING:
    from conductor_executor.service import Executor

log = logging.getLogger("conductor.executor")

_MARK = "lost"
_REPLACED = "replaced"


def ended_by_loss(placed_seq: int | None, lost_seq: int) -> bool:
    """Did a NodeLost at ``lost_seq`` end the run placed at ``placed_seq``? Unknown placements (an
    older executor's record) are left to end as they end: killing a run the fold still counts as
    running would leave it RUNNING forever, as nothing would be reported for it."""
    return placed_seq is not None and 0 < placed_seq < lost_seq


def read_mark(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except OSError:
        return 0
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else 0


def write_mark(path: Path, seq: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{seq}\n")
    tmp.replace(path)


class Liveness:
    def __init__(self, executor: Executor) -> None:
        self.ex = executor
        self.mark = executor.settings.state_dir / executor.node / _MARK
        # The highest NodeLost of this node handled: placements below it are runs already ended.
        self.lost_seq = read_mark(self.mark)
        # Set when this executor took the node over from another instance: placements stored before
        # its registration are that one's runs (``Executor.replacing``). Kept on disk: a restart on
        # this folder is this instance again, and must not start them either.
        self.replaced_mark = executor.settings.state_dir / executor.node / _REPLACED
        self.replaced_before = read_mark(self.replaced_mark)

    def replacing(self, registered_seq: int) -> None:
        self.replaced_before = max(self.replaced_before, registered_seq)
        try:
            write_mark(self.replaced_mark, self.replaced_before)
        except OSError as err:  # only a restart before the node's loss needs it
            log.warning("could not record the replacement", extra={"seq": registered_seq, "error": str(err)})

    def replaced(self, placed_seq: int) -> bool:
        return 0 < placed_seq < self.replaced_before

    def stale(self, placed_seq: int) -> bool:
        return ended_by_loss(placed_seq, self.lost_seq) or self.replaced(placed_seq)

    # -- NodeLost --------------------------------------------------------------------------------
    def node_lost(self, event: ev.NodeLost, seq: int, *, register_again: bool = True) -> None:
        """Synchronous: handled in the consumer's order, before the next placement."""
        if seq <= self.lost_seq:
            return  # handled already (a redelivery)
        self.lost_seq = seq
        try:
            write_mark(self.mark, seq)
        except OSError as err:  # only a restart needs it, for a placement redelivered after it
            log.warning("could not record the node's loss", extra={"seq": seq, "error": str(err)})
        victims = [p for p in self.ex.running.values() if ended_by_loss(p.placed_seq, seq)]
        for process in victims:
            process.kill(lost=True)
            # No longer this node's job as far as cancels and limits go; its cores stay taken until
            # it is gone (``monitor`` frees them), and the registration waits for that.
            self.ex.running.pop(process.job_id, None)
            self.ex.outbox.discard(process.job_id, process.run)
        dropped = self._drop_owed(seq)
        log.warning(
            "node declared lost by the scheduler: killing the jobs it ended, reporting nothing for them",
            extra={
                "node": self.ex.node,
                "seq": seq,
                "reason": event.reason,
                "jobs": [p.job_id for p in victims],
                "reports_dropped": dropped,
            },
        )
        if not register_again:
            return
        task = asyncio.create_task(self._register_after(victims, seq))
        self.ex.monitors.add(task)
        task.add_done_callback(self.ex.monitors.discard)

    async def catch_up(self) -> bool:
        """At start, the node's newest NodeLost, if this executor has not handled it: another executor
        of the node may have read it (one that replaced this one while it was away acknowledged it
        on the node's shared consumer), and then it never comes here, while runs this one adopts
        were ended by it (review of 2026-12-02: they ran on, and the cores they held were given to
        new placements, refused five times each until those jobs ended FAILED). True once looked."""
        try:
            msg = await self.ex.bus.js.get_last_msg(self.ex.bus.stream, subjects.node_lost_of(self.ex.node))
        except NotFoundError:
            return True
        if msg.seq is None or msg.seq <= self.lost_seq:
            return True
        try:
            event = ev.decode(msg.data or b"")
        except ValueError:
            return True
        if isinstance(event, ev.NodeLost) and event.node == self.ex.node:
            # The start's own registration, queued already, is stored after it: no second one.
            self.node_lost(event, msg.seq, register_again=False)
        return True

    def _drop_owed(self, seq: int) -> int:
        """Reports still in the outbox about runs placed before the loss (a job that ended while NATS
        was away): the fold ended those runs at the NodeLost, whatever they say."""
        dropped = 0
        for name in self.ex.outbox.owed():
            if name.job_id is None:
                continue
            record = sv.read_process(self.ex.folder(name.job_id, name.run))
            if record is not None and ended_by_loss(record.placed_seq, seq):
                dropped += self.ex.outbox.discard(name.job_id, name.run)
        return dropped

    async def _register_after(self, victims: list[JobProcess], seq: int) -> None:
        # Once the killed jobs are gone and their cores free (their monitors end after the kill and a
        # look for what they left): a placement on their cores before that would wait for them.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2 * self.ex.settings.kill_grace_s + 5
        waits = [asyncio.shield(p.exited) for p in victims]
        if waits:
            with contextlib.suppress(Exception):
                await asyncio.wait(waits, timeout=deadline - loop.time())
        # Polled: cores are given back in several places, and this runs once per NodeLost.
        while any(self._holds(p) for p in victims) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.ex.registered_seq > seq:
            return  # the node registered after that loss already (an old NodeLost, read late)
        if not await self.ex.still_ours():
            return  # another executor took the node over meanwhile: it registers it
        if await self.ex.outbox.keep(self.ex.registration(), self.ex.stop):
            log.info("node registered again after being declared lost", extra={"node": self.ex.node, "seq": seq})

    def _holds(self, process: JobProcess) -> bool:
        held = self.ex.placements.get(process.job_id)
        return held is not None and held.run == process.run

    # -- self-fencing ----------------------------------------------------------------------------
    def fence(self, silent_s: float) -> None:
        """No heartbeat got through for ``silent_s``: kill the jobs the scheduler would requeue."""
        victims = [p for p in self.ex.running.values() if p.requeue and not p.reasons]
        for process in victims:
            process.kill(fenced=True)
        log.warning(
            "no heartbeat for longer than node_lost_after_s: the node may be declared lost; "
            "killing the jobs that would be requeued, letting the others run",
            extra={
                "node": self.ex.node,
                "silent_s": round(silent_s, 1),
                "killed": [p.job_id for p in victims],
                "kept": [p.job_id for p in self.ex.running.values() if all(p is not v for v in victims)],
            },
        )
