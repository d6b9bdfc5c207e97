"""The event catalogue: every fact SCNS-Conductor records, as frozen Pydantic models.

The job state machine these events drive is in ``states.py``. Rules:
- every event has ``type`` (the discriminator), ``version``, ``event_id`` and ``occurred_at``;
- a job's id is the stream sequence of its JobSubmitted, so JobSubmitted itself carries no job id;
- schemas evolve by adding optional fields; a breaking change gets a new ``version`` and an upcaster.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from conductor_contracts.dependencies import Dependency
from conductor_contracts.states import JobState

# Lower bounds the scheduler's fold relies on: a job or node of zero or negative size would give
# room instead of taking it. An event outside them does not decode, so every consumer skips it as
# one it cannot apply (upper bounds are the gateway's: the fold holds any int).
Positive = Annotated[int, Field(ge=1)]
Core = Annotated[int, Field(ge=0)]
# Which run of a job an event is about: 0, then one more each time the job is requeued. A report of an
# earlier run (an executor back from a node declared lost) changes nothing.
Run = Annotated[int, Field(ge=0)]
# The fold keeps a node's free cores as a set: a node of a billion CPUs would exhaust its memory.
MAX_NODE_CPUS = 65536
# Users' and workflows' ids are UUIDs, and a token of their subjects.
Uuid = Annotated[str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    """In UTC: a time that has no UTC date (year 1 at +14:00) does not decode, rather than decode
    for one consumer and be refused by PostgreSQL later."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError as err:
        raise ValueError(f"{value.isoformat()} has no date in UTC") from err


class EventBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    version: int = 1
    event_id: str = Field(default_factory=_new_id)
    occurred_at: datetime = Field(default_factory=_now)

    @field_validator("occurred_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        """Every consumer stores or compares it in UTC."""
        return _utc(value)


class JobSubmitted(EventBase):
    type: Literal["JobSubmitted"] = "JobSubmitted"
    name: str
    account: str
    partition: str
    ntasks_per_node: Positive
    cpus_per_task: Positive
    cpus: Positive
    memory_mb: Positive
    time_limit_s: Positive | None
    working_directory: str
    standard_output: str
    standard_error: str | None
    environment: dict[str, str] = Field(default_factory=dict)
    script: str
    # Optional, added later (older events decode without them):
    dependency: Dependency | None = None
    # Slurm's --requeue: when its node is lost, the job goes back to PENDING instead of NODE_FAIL.
    requeue: bool = False
    # A no-op job (a workflow job without a script) runs nothing: the scheduler completes it as soon
    # as its dependency holds, without a node (DAGMan's NOOP nodes).
    noop: bool = False
    # A workflow's job. Its jobs are one atomic batch right after the workflow's WorkflowSubmitted,
    # so job ``i`` is at stream sequence ``workflow seq + 1 + i`` and a parent index is resolved from
    # the job's own sequence: ``seq - (workflow_index - parent_index)``.
    workflow_id: str | None = None
    workflow_index: Annotated[int, Field(ge=0)] | None = None
    parent_indices: tuple[Annotated[int, Field(ge=0)], ...] = ()
    branch_id: str | None = None
    job_type: str | None = None

    def parent_ids(self, seq: int) -> list[int]:
        """The job ids of a workflow job's parents, this job being at stream sequence ``seq``; only
        indices before its own count (the gateway accepts no other)."""
        index = self.workflow_index
        if index is None:
            return []
        return [seq - (index - p) for p in self.parent_indices if p < index]


class JobCancelRequested(EventBase):
    type: Literal["JobCancelRequested"] = "JobCancelRequested"
    job_id: int


class JobPlaced(EventBase):
    type: Literal["JobPlaced"] = "JobPlaced"
    job_id: int
    node: str
    cores: tuple[Core, ...]
    memory_mb: Annotated[int, Field(ge=0)]
    run: Run = 0


class JobReasonChanged(EventBase):
    """A pending job's reason for waiting changed (Slurm's REASON column); only emitted on change."""

    type: Literal["JobReasonChanged"] = "JobReasonChanged"
    job_id: int
    reason: str
    detail: str = ""


class RunOutcome(EventBase):
    """An outcome that may carry its run's start: an executor holds a job's JobStarted back for a
    moment (``CONDUCTOR_START_REPORT_DELAY_S``), and a run that ends within it reports its pid and
    start time here instead, one event fewer (docs/decisions.md, "A short job's start goes out with
    its outcome"). Both None: its JobStarted went out, or it never started."""

    pid: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None  # the read model's column holds it
    started_at: datetime | None = None

    @field_validator("started_at")
    @classmethod
    def _started_in_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _utc(value)


class JobStarted(EventBase):
    type: Literal["JobStarted"] = "JobStarted"
    job_id: int
    node: str
    pid: int
    run: Run = 0


class JobCompleted(RunOutcome):
    """``node`` is None for a no-op job, which the scheduler completes without running anything."""

    type: Literal["JobCompleted"] = "JobCompleted"
    job_id: int
    node: str | None = None
    exit_code: int = 0
    run: Run = 0


class JobFailed(RunOutcome):
    type: Literal["JobFailed"] = "JobFailed"
    job_id: int
    node: str
    exit_code: int | None
    message: str = ""
    node_fail: bool = False
    run: Run = 0
    # The node refused the placement before anything of the job ran (it no longer fits the node: the
    # node came back smaller): the scheduler runs it again, requeue or not.
    never_started: bool = False


class JobTimedOut(RunOutcome):
    type: Literal["JobTimedOut"] = "JobTimedOut"
    job_id: int
    node: str
    exit_code: int | None = None
    run: Run = 0


class JobOutOfMemory(RunOutcome):
    type: Literal["JobOutOfMemory"] = "JobOutOfMemory"
    job_id: int
    node: str
    exit_code: int | None = None
    run: Run = 0


class JobCancelled(RunOutcome):
    """Terminal. ``node`` is None when the scheduler cancelled a job that never reached a node."""

    type: Literal["JobCancelled"] = "JobCancelled"
    job_id: int
    node: str | None = None
    exit_code: int | None = None
    # Why the scheduler cancelled a pending job other than on request (DependencyNeverSatisfied).
    reason: str = ""
    detail: str = ""
    run: Run = 0


class NodeRegistered(EventBase):
    type: Literal["NodeRegistered"] = "NodeRegistered"
    node: str
    cpus: Annotated[int, Field(ge=1, le=MAX_NODE_CPUS)]
    memory_mb: Positive
    partitions: tuple[str, ...] = ("default",)
    # Which executor registers: an id kept in its state folder, the same across its restarts ("": an
    # executor older than the field). A node registered by another instance while runs of the one
    # before are in the log has had its executor replaced: those runs end once that one is surely
    # gone (the scheduler's liveness.py).
    instance: Annotated[str, Field(max_length=64, pattern=r"^[-_A-Za-z0-9]*$")] = ""


class JobRequeued(EventBase):
    """By the scheduler: run ``run`` of a job that asked to be requeued ended with its node; the job
    is PENDING again and its next placement is run ``run + 1``."""

    type: Literal["JobRequeued"] = "JobRequeued"
    job_id: int
    node: str
    run: Run = 0
    reason: str = ""


class NodeLost(EventBase):
    """By the scheduler: the node's executor has been silent too long. Its jobs end NODE_FAIL (or are
    requeued); it takes work again once it registers again."""

    type: Literal["NodeLost"] = "NodeLost"
    node: str
    reason: str = ""
    # The stream sequence through which the node's executor had been handed its messages (its
    # consumer paused meanwhile), None when not known: a run placed after it never reached the node,
    # never started, and runs again whether or not it asked to be requeued.
    delivered: Annotated[int, Field(ge=0)] | None = None


class NodeDrainRequested(EventBase):
    """No new placements on the node; what runs there finishes (DRAINING, DRAINED). By the gateway
    for an operator, or, ``by_node``, by the node's own executor when its disk refuses the files a
    job needs (it would fail every job placed there, as Slurm drains a node whose prolog fails)."""

    type: Literal["NodeDrainRequested"] = "NodeDrainRequested"
    node: str
    reason: str = ""
    by_node: bool = False


class NodeResumeRequested(EventBase):
    type: Literal["NodeResumeRequested"] = "NodeResumeRequested"
    node: str


class NodeDrained(EventBase):
    type: Literal["NodeDrained"] = "NodeDrained"
    node: str
    reason: str = ""


class UserCreated(EventBase):
    """Published on the user's own subject with an expected last sequence of 0: a second user of
    the same name is refused by the stream, whichever gateway publishes it."""

    type: Literal["UserCreated"] = "UserCreated"
    user_id: Uuid
    username: str


class WorkflowSubmitted(EventBase):
    """First of an atomic batch; the workflow's ``job_count`` JobSubmitted follow it in order."""

    type: Literal["WorkflowSubmitted"] = "WorkflowSubmitted"
    workflow_id: Uuid
    user_id: Uuid
    owner: str
    job_count: Positive
    name: str = ""


TerminalJobEvent = JobCompleted | JobFailed | JobTimedOut | JobOutOfMemory | JobCancelled
TERMINAL_JOB_EVENTS = (JobCompleted, JobFailed, JobTimedOut, JobOutOfMemory, JobCancelled)
# Their ``type`` names, for what knows an event only by name (a file name, a dead letter's column).
TERMINAL_TYPES = frozenset(cls.model_fields["type"].default for cls in TERMINAL_JOB_EVENTS)


def final_state(event: TerminalJobEvent) -> JobState:
    """The state a job's outcome leaves it in (states.py draws the machine)."""
    match event:
        case JobCompleted():
            return JobState.COMPLETED
        case JobFailed():
            return JobState.NODE_FAIL if event.node_fail else JobState.FAILED
        case JobTimedOut():
            return JobState.TIMEOUT
        case JobOutOfMemory():
            return JobState.OUT_OF_MEMORY
    return JobState.CANCELLED


Event = Annotated[
    JobSubmitted
    | JobCancelRequested
    | JobPlaced
    | JobReasonChanged
    | JobStarted
    | JobCompleted
    | JobFailed
    | JobTimedOut
    | JobOutOfMemory
    | JobCancelled
    | JobRequeued
    | NodeRegistered
    | NodeLost
    | NodeDrained
    | NodeDrainRequested
    | NodeResumeRequested
    | UserCreated
    | WorkflowSubmitted,
    Field(discriminator="type"),
]

# pydantic-core caches every short string it parses, values too, in 16,384 slots that live until a
# later string takes them: nearly every event brings fresh values (its id, its time), so the cache kept
# a stream of small objects alive, scattered over memory pools a service had freed otherwise (the
# scheduler's RSS stayed near a drained 100k-deep queue's peak). Keys are the same few names in every
# event: caching them holds nothing new. Decoding costs the same (bench/scale.py).
_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event, config=ConfigDict(cache_strings="keys"))


def encode(event: Event) -> bytes:
    return event.model_dump_json().encode()


def decode(data: bytes) -> Event:
    return _ADAPTER.validate_json(data)
