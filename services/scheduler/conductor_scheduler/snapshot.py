"""Snapshots of the scheduler's fold: ``ClusterState`` as JSON with the stream sequence it covers, so a
starting scheduler loads the newest one and replays only the log after it.

A snapshot is data, never code (no pickle: anyone who can write to NATS could otherwise run code in
the scheduler), checked as a whole: a magic line with the format and the SHA-256 of the compressed
body. One that is missing, cut short, damaged or of another format is refused (``load`` returns
None) and the scheduler replays the whole log: a wrong state is never loaded, a slow start is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from base64 import b64decode, b64encode
from typing import Any

from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from conductor_contracts.dependencies import Dependency, Verdict
from conductor_platform.bus import Bus
from conductor_platform.which_log import identity_of, other_log
from conductor_scheduler.holds import Holds, JobStates, Waiter
from conductor_scheduler.state import Allocation, ClusterState, Node, PendingJob

log = logging.getLogger("conductor.scheduler")

# 2: the jobs a dependency let go that still show Dependency ("released"). 3: nodes' executor
# instances and replacement, the reason they were lost, runs' placement sequences: a snapshot of 2,
# folded on, would not know the instances its log had registered (a replacement then went unseen,
# its runs RUNNING for good). A snapshot of another format is not loaded: the log is folded from the
# start, once, after an upgrade.
FORMAT = 3
MAGIC = b"conductor-scheduler-snapshot"


def _job(j: PendingJob) -> list[Any]:
    return [j.job_id, j.partition, j.cpus, j.memory_mb, j.noop, j.requeue, j.run, j.submitted_at, j.traceparent]


def _job_from(v: list[Any]) -> PendingJob:
    traceparent = None if v[8] is None else str(v[8])
    return PendingJob(
        int(v[0]), str(v[1]), int(v[2]), int(v[3]), bool(v[4]), bool(v[5]), int(v[6]), float(v[7]), traceparent
    )


def _holds(h: Holds) -> dict[str, Any]:
    return {
        "base": h.states.base,
        "codes": b64encode(bytes(h.states.codes)).decode(),
        "waiting": [
            [job, w.dependency.model_dump(mode="json"), [v.value for v in w.verdicts], w.holds, w.never]
            for job, w in h.waiting.items()
        ],
        "watchers": [[job, [list(p) for p in pairs]] for job, pairs in h.watchers.items()],
        "singletons": [[list(key), [list(p) for p in pairs]] for key, pairs in h.singletons.items()],
        "active": [[list(key), list(jobs)] for key, jobs in h.active.items()],
        "key_of": [[job, list(key)] for job, key in h.key_of.items()],
    }


def _holds_from(d: dict[str, Any]) -> Holds:
    return Holds(
        states=JobStates(int(d["base"]), bytearray(b64decode(d["codes"]))),
        waiting={
            int(job): Waiter(Dependency.model_validate(dep), [Verdict(v) for v in verdicts], int(holds), int(never))
            for job, dep, verdicts, holds, never in d["waiting"]
        },
        watchers={int(job): [(int(a), int(b)) for a, b in pairs] for job, pairs in d["watchers"]},
        singletons={(str(k[0]), str(k[1])): [(int(a), int(b)) for a, b in pairs] for k, pairs in d["singletons"]},
        active={(str(k[0]), str(k[1])): dict.fromkeys(int(j) for j in jobs) for k, jobs in d["active"]},
        key_of={int(job): (str(k[0]), str(k[1])) for job, k in d["key_of"]},
    )


def _node(n: Node) -> list[Any]:
    return [
        n.name,
        n.cpus,
        n.memory_mb,
        list(n.partitions),
        sorted(n.free_cores),
        n.free_memory_mb,
        n.alloc_cpus,
        n.lost,
        n.draining,
        n.instance,
        n.replaced,
        n.lost_reason,
    ]


def encode(state: ClusterState) -> dict[str, Any]:
    return {
        "nodes": [_node(n) for n in state.nodes.values()],
        "pending": [_job(j) for j in state.pending.values()],  # in submit order
        "queued": state.queued,
        "running": [
            [job, a.node, list(a.cores), a.memory_mb, _job(a.job), a.run, a.placed_seq]
            for job, a in state.running.items()
        ],
        "cancel_requested": sorted(state.cancel_requested),
        "reasons": [[job, reason] for job, reason in state.reasons.items()],
        "holds": _holds(state.holds),
        "doomed": [[job, why] for job, why in state.doomed.items()],
        "ready_noops": sorted(state.ready_noops),
        "orphans": [[job, node] for job, node in state.orphans.items()],
        "unstarted": [[job, why] for job, why in state.unstarted.items()],
        "released": sorted(state.released),
        "last_seq": state.last_seq,
        "last_scheduler_seq": state.last_scheduler_seq,
    }


def decode(d: dict[str, Any]) -> ClusterState:
    nodes = {}
    for name, cpus, memory, partitions, free, free_memory, alloc, lost, draining, *since in d["nodes"]:
        nodes[str(name)] = Node(
            str(name), int(cpus), int(memory), tuple(partitions), set(free), int(free_memory), int(alloc), bool(lost)
        )
        nodes[str(name)].draining = draining
        # Absent from a snapshot made before executors had instances: none registered with one.
        if since:
            nodes[str(name)].instance, nodes[str(name)].replaced = str(since[0]), bool(since[1])
        if len(since) > 2:
            nodes[str(name)].lost_reason = str(since[2])
    return ClusterState(
        nodes=nodes,
        pending={job.job_id: job for job in map(_job_from, d["pending"])},
        queued={str(k): int(v) for k, v in d["queued"].items()},
        running={
            # A snapshot made before placements' sequences were kept has none: 0, never "not delivered".
            int(job): Allocation(
                str(node), tuple(cores), int(memory), _job_from(spec), int(run), int(placed[0]) if placed else 0
            )
            for job, node, cores, memory, spec, run, *placed in d["running"]
        },
        cancel_requested=set(d["cancel_requested"]),
        reasons={int(job): str(reason) for job, reason in d["reasons"]},
        holds=_holds_from(d["holds"]),
        doomed={int(job): str(why) for job, why in d["doomed"]},
        ready_noops=set(d["ready_noops"]),
        orphans={int(job): str(node) for job, node in d["orphans"]},
        # Absent from a snapshot made before it existed, when no executor reported a run unstarted.
        unstarted={int(job): str(why) for job, why in d.get("unstarted", [])},
        released={int(job) for job in d["released"]},
        last_seq=int(d["last_seq"]),
        last_scheduler_seq=int(d["last_scheduler_seq"]),
    )


def dump(state: ClusterState, log: str = "") -> bytes:
    """``log`` names the stream the state was folded from (its creation time): a snapshot of another
    stream of the same name (deleted and created again) must not be loaded."""
    body = zlib.compress(json.dumps(encode(state), separators=(",", ":")).encode(), 1)
    header = {"format": FORMAT, "seq": state.last_seq, "log": log, "sha256": hashlib.sha256(body).hexdigest()}
    return MAGIC + b" " + json.dumps(header).encode() + b"\n" + body


def load(data: bytes, log: str = "") -> ClusterState | None:
    """The state in ``data``, or None for anything but a whole snapshot of this format and log."""
    try:
        first, _, body = data.partition(b"\n")
        magic, _, header_text = first.partition(b" ")
        header = json.loads(header_text)
        if magic != MAGIC or header.get("format") != FORMAT or header.get("log", "") != log:
            return None
        if hashlib.sha256(body).hexdigest() != header.get("sha256"):
            return None
        state = decode(json.loads(zlib.decompress(body)))
    except Exception:  # whatever is wrong with it, a full replay is the answer
        return None
    return state if state.last_seq == header.get("seq") else None


# Where snapshots are kept: one object, replaced by each new snapshot.
BUCKET = "conductor_snapshots"
NAME = "scheduler"


async def _store(bus: Bus) -> ObjectStore:
    try:
        return await bus.js.object_store(BUCKET)
    except NotFoundError:
        config = ObjectStoreConfig(storage=StorageType.FILE, replicas=bus.replicas)
        return await bus.js.create_object_store(BUCKET, config=config)


async def restore(bus: Bus) -> ClusterState | None:
    """The newest snapshot, if it is whole, of this log, and the log still holds what follows it."""
    try:
        stored = await (await _store(bus)).get(NAME)
    except NotFoundError:
        return None
    info = await bus.js.stream_info(bus.stream)
    state = load(stored.data or b"", identity_of(info))
    if state is None:
        log.warning("the scheduler's snapshot is damaged, of another format or of another log: replaying it all")
        return None
    if state.last_seq + 1 < int(info.state.first_seq or 1):
        log.warning("the log no longer holds what follows the snapshot: replaying it all")
        return None
    if why := other_log(info, None, state.last_seq):
        # Folded from events the log no longer holds (NATS lost its last writes unsynced, or was restored
        # from a backup): the next events take their sequences, and a state from there would skip them.
        log.error("the scheduler's snapshot is ahead of the log (%s): replaying it all", why)
        return None
    return state


async def upload(bus: Bus, data: bytes) -> None:
    await (await _store(bus)).put(NAME, data)
