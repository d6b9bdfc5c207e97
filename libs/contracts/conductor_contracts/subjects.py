"""Subjects and the stream: defined here once, derived from events, never typed at a call site.

One stream holds the log of record. Subjects say who wrote an event, so a consumer or a fencing check
can select by writer:

    conductor.gw.submitted                  JobSubmitted (job id = its stream sequence)
    conductor.gw.cancel.<job>               JobCancelRequested
    conductor.gw.workflow.<workflow>        WorkflowSubmitted (its jobs' JobSubmitted follow, one batch)
    conductor.gw.node.<node>.drain|resume   NodeDrainRequested, NodeResumeRequested
    conductor.gw.user.<user>                UserCreated (one per user id: the id is the name's uuid5)
    conductor.sched.placed.<node>           JobPlaced            } the scheduler's decisions: published
    conductor.sched.job.<job>.<event>       JobCancelled, JobCompleted (no-op job), JobFailed (node
                                            lost), JobRequeued, JobReasonChanged
                                                                 } fenced on ``conductor.sched.>``
    conductor.sched.node.<node>.<event>     NodeLost, NodeDrained}
    conductor.exec.<node>.job.<event>       JobStarted and the outcomes an executor reports
    conductor.exec.<node>.node.registered   NodeRegistered
    conductor.exec.<node>.node.drain        NodeDrainRequested by the node itself (its disk refuses jobs)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from conductor_contracts import events as ev

STREAM = "CONDUCTOR"
ROOT = "conductor"
ALL = f"{ROOT}.>"
SCHEDULER_ALL = f"{ROOT}.sched.>"
SUBMITTED = f"{ROOT}.gw.submitted"
CANCEL_ALL = f"{ROOT}.gw.cancel.*"


@dataclass(frozen=True)
class StreamSpec:
    name: str = STREAM
    subjects: tuple[str, ...] = (ALL,)
    # Idempotency-Key retries are answered from the stream's dedupe table within this window. The
    # server keeps every message id of the window in memory, so hours, not days.
    duplicate_window_s: float = 2 * 3600
    max_msg_size: int = 1024 * 1024
    # Set, not left to the server: nats-server 2.15 caps a stream without a limit of its own at 1,000
    # consumers, and each node's executor holds one (a durable), beside the services' readers and one
    # per GET /events client (capped per gateway): a 1,000-node cluster's last executors could not start.
    max_consumers: int = 10_000

    @property
    def max_event_bytes(self) -> int:
        """The largest encoded event that fits one message, with room left for its headers."""
        return self.max_msg_size - 4096


STREAM_SPEC = StreamSpec()

# `conductor compact` purges the log's oldest events per subject filter (after archiving them): all
# of these, and never a user (a name is taken for ever: its check is "nothing on its subject yet").
COMPACTED_SUBJECTS = (
    SUBMITTED,
    f"{ROOT}.gw.cancel.>",
    f"{ROOT}.gw.workflow.>",
    f"{ROOT}.gw.node.>",
    SCHEDULER_ALL,
    f"{ROOT}.exec.>",
)
KEPT_SUBJECTS = (f"{ROOT}.gw.user.>",)
# Where `conductor compact` records the sequence below which the log lives in its archive.
COMPACTION_BUCKET = "conductor_compaction"
# Where the republisher notes how far it published, for when the public stream has aged out whole
# (`conductor compact` and a restarted republisher would otherwise read "nothing published").
PUBLIC_POSITION_BUCKET = "conductor_public_position"

LEASES_BUCKET = "conductor_leases"
SCHEDULER_LEASE_KEY = "scheduler"
# Each executor's heartbeat: one key per node, rewritten every few seconds (not events: a thousand
# nodes would fill the log with them).
HEARTBEATS_BUCKET = "conductor_heartbeats"
_KEY = re.compile(r"^[-_A-Za-z0-9]{1,200}$")


def heartbeat_key(node: str) -> str:
    """The node's key: its name when a KV key can be it, else its name in hex."""
    return node if _KEY.match(node) else "x-" + node.encode().hex()


def node_of_heartbeat_key(key: str) -> str:
    return bytes.fromhex(key[2:]).decode() if key.startswith("x-") else key


# Job output, uploaded by the executor when a job ends, so any gateway can serve it.
OUTPUT_BUCKET = "conductor_output"


def output_object(job_id: int, stream: str) -> str:
    return f"job-{job_id}-{stream}"


def placements_for(node: str) -> str:
    return f"{ROOT}.sched.placed.{node}"


def executor_consumer(node: str) -> str:
    """The durable consumer through which a node's executor reads its placements."""
    return f"executor-{node}"


def node_lost_of(node: str) -> str:
    return f"{ROOT}.sched.node.{node}.lost"


def cancel_of(job_id: int) -> str:
    return f"{ROOT}.gw.cancel.{job_id}"


def workflow_subject(workflow_id: str) -> str:
    return f"{ROOT}.gw.workflow.{workflow_id}"


def user_subject(user_id: str) -> str:
    return f"{ROOT}.gw.user.{user_id}"


def is_scheduler_subject(subject: str) -> bool:
    return subject.startswith(f"{ROOT}.sched.")


def subject_for(event: ev.Event, *, by_scheduler: bool = False) -> str:
    """The subject of an event. JobCancelled is written by the scheduler (a pending job) or by an
    executor (a running one); ``by_scheduler`` tells which."""
    match event:
        case ev.JobSubmitted():
            return SUBMITTED
        case ev.JobCancelRequested(job_id=job_id):
            return cancel_of(job_id)
        case ev.WorkflowSubmitted(workflow_id=workflow_id):
            return workflow_subject(workflow_id)
        case ev.UserCreated(user_id=user_id):
            return user_subject(user_id)
        case ev.JobPlaced(node=node):
            return placements_for(node)
        case ev.JobReasonChanged(job_id=job_id):
            return f"{ROOT}.sched.job.{job_id}.reason"
        case ev.NodeLost(node=node):
            return node_lost_of(node)
        case ev.NodeDrained(node=node):
            return f"{ROOT}.sched.node.{node}.{event.type.removeprefix('Node').lower()}"
        case ev.NodeRegistered(node=node):
            return f"{ROOT}.exec.{node}.node.registered"
        case ev.JobCancelled(job_id=job_id) if by_scheduler or event.node is None:
            return f"{ROOT}.sched.job.{job_id}.cancelled"
        case ev.JobCompleted(job_id=job_id, node=None):
            return f"{ROOT}.sched.job.{job_id}.completed"
        case ev.JobFailed(job_id=job_id) if by_scheduler:
            return f"{ROOT}.sched.job.{job_id}.failed"
        case ev.JobRequeued(job_id=job_id):
            return f"{ROOT}.sched.job.{job_id}.requeued"
        case ev.NodeDrainRequested(node=node, by_node=True):
            return f"{ROOT}.exec.{node}.node.drain"
        case ev.NodeDrainRequested(node=node):
            return f"{ROOT}.gw.node.{node}.drain"
        case ev.NodeResumeRequested(node=node):
            return f"{ROOT}.gw.node.{node}.resume"
        case (
            ev.JobStarted(node=node)
            | ev.JobCompleted(node=node)
            | ev.JobFailed(node=node)
            | ev.JobTimedOut(node=node)
            | ev.JobOutOfMemory(node=node)
            | ev.JobCancelled(node=node)
        ):
            return f"{ROOT}.exec.{node}.job.{event.type.removeprefix('Job').lower()}"
    raise ValueError(f"no subject for {event!r}")


def dedupe_id(event: ev.Event, *, by_scheduler: bool = False) -> str:
    """``Nats-Msg-Id``: outcomes are keyed by job and run, so a retried report is stored once and a
    requeued job's next run reports again. The scheduler's decisions are keyed apart from the
    executors' reports (``by_scheduler``): its JobFailed ending a requeue job past its requeues has
    the job and run of the executor's JobFailed before it, and the stream dropped it as that one's
    duplicate, which refused its whole fenced batch, cycle after cycle: nothing was scheduled again."""
    if by_scheduler:
        return "sched:" + dedupe_id(event)
    match event:
        case (
            ev.JobStarted()
            | ev.JobCompleted()
            | ev.JobFailed()
            | ev.JobTimedOut()
            | ev.JobOutOfMemory()
            | ev.JobCancelled()
            | ev.JobRequeued()
        ):
            return f"{event.type}:{event.job_id}" + (f":{event.run}" if event.run else "")
    return event.event_id
