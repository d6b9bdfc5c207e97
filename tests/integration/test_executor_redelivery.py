"""Placements an executor had fetched but not acked when it was SIGKILLed reach its successor within
a few seconds (the consumer's short ack_wait), not after 30 s, and run once; a live executor's batch
that takes longer than ack_wait is kept from being delivered again by in-progress acks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor.placements import ACK_WAIT_S, PlacementReader, ensure_consumer, filters, subscribe
from conductor_platform.bus import Bus
from tests.integration.executor_jobs import counted_job, events_by_job, place_as_one_batch, starts_by_job
from tests.integration.helpers import eventually
from tests.integration.test_executor import NODE, _has, executor_settings
from tests.integration.test_executor_restart import ExecutorProcess

CPUS = 32
JOBS = 32
# Well below the 30 s it was; a correctness bound, not a benchmark.
BOUND_S = 15.0


async def test_placements_fetched_by_a_killed_executor_start_soon_after_its_restart_and_once(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    settings = executor_settings(nats_url, tmp_path, cpus=CPUS, memory="8G")
    ids = [await bus.publish(counted_job(tmp_path, tmp_path)) for _ in range(JOBS)]
    executor = ExecutorProcess(settings, cpus=CPUS, memory="8G")
    try:
        await eventually(lambda: _has(bus, ev.NodeRegistered), what="node registered")
        # Killed as soon as it has started the first: the rest of the batch is fetched and not acked.
        await place_as_one_batch(bus, executor, settings, ids)
    finally:
        executor.kill()
    killed_at = time.time()
    info = await bus.js.consumer_info(bus.stream, f"executor-{NODE}")
    assert info.num_ack_pending > 0, "nothing was fetched and left unacked: the test proves nothing"
    assert info.config.ack_wait == ACK_WAIT_S
    waiting = [job_id for job_id in ids if not (settings.jobs_dir / str(job_id)).exists()]
    assert waiting, "every placement was handled before the kill"
    restarted_at = time.time()
    successor = ExecutorProcess(settings, cpus=CPUS, memory="8G")
    try:

        async def all_ended() -> dict[int, list[ev.Event]] | None:
            found = await events_by_job(bus)
            return found if all(job_id in found for job_id in ids) else None

        await eventually(all_ended, timeout=60, what="every job's outcome")
        await asyncio.sleep(1.0)  # a second start or outcome would come now
        started = await starts_by_job(bus)
        outcomes = await events_by_job(bus)
    finally:
        successor.kill()
    delays = sorted(started[job_id][0].occurred_at.timestamp() - restarted_at for job_id in waiting)
    print(
        f"\n{len(waiting)} placements fetched and not acked at the kill ({info.num_ack_pending} pending); "
        f"restart {restarted_at - killed_at:.2f} s after the kill; started after the restart: "
        f"first {delays[0]:.2f} s, last {delays[-1]:.2f} s"
    )
    for job_id in ids:
        assert len(outcomes[job_id]) == 1, f"job {job_id}: {outcomes[job_id]}"
        assert len(started.get(job_id, [])) <= 1, f"job {job_id} started twice"
        runs = tmp_path / f"runs-{job_id}"
        assert (runs.read_text() if runs.exists() else "") in ("", "run\n"), f"job {job_id} ran twice"
    for job_id in waiting:
        assert (tmp_path / f"runs-{job_id}").read_text() == "run\n", f"job {job_id} did not run once"
        [outcome] = outcomes[job_id]
        assert isinstance(outcome, ev.JobCompleted), outcome
    assert delays[-1] < BOUND_S, f"placements fetched by the killed executor started {delays[-1]:.1f} s after"


async def test_a_batch_held_longer_than_ack_wait_is_not_delivered_again(bus: Bus) -> None:
    node = "slownode"
    reader = PlacementReader(await subscribe(bus, node))
    for job_id in range(1, 4):
        await bus.publish(ev.JobPlaced(job_id=job_id, node=node, cores=(0,), memory_mb=1))
    msgs = await reader.fetch(32, 5)
    assert len(msgs) == 3
    await msgs[0].ack()
    # The rest of the batch is still being handled, longer than ack_wait. Meanwhile another pull of
    # the consumer is waiting (as the end of the executor's own request may be): it gets nothing.
    other = PlacementReader(await subscribe(bus, node), progress_every_s=3600)
    held_until = time.monotonic() + ACK_WAIT_S + 2.5
    while time.monotonic() < held_until:
        assert await _fetched(other) is None, "a message of a batch still being handled was delivered again"
    info = await bus.js.consumer_info(bus.stream, f"executor-{node}")
    assert info.num_redelivered == 0 and info.num_ack_pending == 2, info
    for msg in msgs[1:]:
        await msg.ack()
    # Once the batch is settled, nothing more is said about it; a message left unsettled by a reader
    # that stopped (the executor killed) is delivered again after ack_wait.
    lost = PlacementReader(await subscribe(bus, node), progress_every_s=3600)
    await bus.publish(ev.JobPlaced(job_id=4, node=node, cores=(0,), memory_mb=1))
    [held] = await lost.fetch(32, 5)
    again = await eventually(lambda: _fetched(reader), timeout=ACK_WAIT_S + 5, what="delivered again")
    assert [msg.metadata.sequence.stream for msg in again] == [held.metadata.sequence.stream]
    assert again[0].metadata.num_delivered == 2
    await again[0].ack()


async def _fetched(reader: PlacementReader) -> list[Msg] | None:
    try:
        return list(await reader.fetch(32, 0.2))
    except TimeoutError:
        return None


async def test_an_earlier_consumer_gets_the_short_ack_wait_in_place(bus: Bus) -> None:
    node = "oldnode"
    await bus.js.add_consumer(
        bus.stream,
        ConsumerConfig(
            durable_name=f"executor-{node}",
            filter_subjects=filters(node),
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            max_ack_pending=1000,
        ),
    )
    sub = await subscribe(bus, node)  # ensure_consumer, as a starting executor calls it
    await bus.publish(ev.JobPlaced(job_id=1, node=node, cores=(0,), memory_mb=1))
    [msg] = await PlacementReader(sub).fetch(32, 5)
    await msg.ack()
    info = await bus.js.consumer_info(bus.stream, f"executor-{node}")
    assert info.config.ack_wait == ACK_WAIT_S
    assert sorted(info.config.filter_subjects or ()) == sorted(filters(node))
    assert subjects.placements_for(node) in (info.config.filter_subjects or ())
    # Again: nothing to change, and the position is kept.
    await ensure_consumer(bus, node)
    again = await bus.js.consumer_info(bus.stream, f"executor-{node}")
    assert again.delivered.stream_seq == info.delivered.stream_seq and again.config.ack_wait == ACK_WAIT_S
