"""HTTP bodies of users and workflows: the second seed's payloads (004-my-scheduler-phase1), kept
field for field, with what it takes to run them.

A workflow's job is flat, as the seed has it (``name``, ``job_type``, ``branch_id``,
``parent_indices``), and may carry beside those the fields of a submit's ``job`` object but
``dependency`` (its parents are its dependency) and its ``script``, with defaults (1 CPU, 512M,
partition ``default``, the user's name as account...). A job without a script is a no-op: it completes
as soon as its parents have.
"""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    FailFast,
    Field,
    StrictInt,
    StringConstraints,
    model_validator,
)

from conductor_contracts.api import (
    MAX_ENV_BYTES,
    Closed,
    EnvName,
    EnvValue,
    JobSpec,
    Label,
    PathText,
    Text,
    canonical_hash,
    printable_label,
)

MAX_USERNAME_CHARS = 64
# A workflow is one atomic batch on the stream, which holds at most 1,000 messages: the workflow's
# own event and its jobs.
MAX_WORKFLOW_JOBS = 999
MAX_WORKFLOW_EDGES = 20_000
DEFAULT_WORKFLOW_CWD = "/tmp"
# Users are named by a UUID derived from their name, so any gateway finds a user by id in the log.
USER_NAMESPACE = uuid.UUID("6f1c2d0e-8b7a-4c55-9f3e-2a1d5b7c9e10")
# A workflow submitted with an Idempotency-Key is named by its user and key (``workflow_id_of``).
WORKFLOW_NAMESPACE = uuid.UUID("0b9e6a52-3f1d-4c7e-a8d2-5e4f3c2b1a90")


def _username(value: str) -> str:
    # One name, one user: "é" typed composed or decomposed is the same name.
    name = unicodedata.normalize("NFC", value)
    if len(name) > MAX_USERNAME_CHARS:  # a few characters grow when composed
        raise ValueError(f"at most {MAX_USERNAME_CHARS} characters")
    return printable_label(name)


Username = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_USERNAME_CHARS),
    AfterValidator(_username),
    Text,
]


def user_id_of(username: str) -> str:
    return str(uuid.uuid5(USER_NAMESPACE, username))


def workflow_id_of(user_id: str, idempotency_key: str) -> str:
    """The id of a workflow submitted with an Idempotency-Key: a retry names the same workflow, and its
    subject in the log holds at most one (a second is refused by the stream, whichever gateway sent it)."""
    return str(uuid.uuid5(WORKFLOW_NAMESPACE, f"{user_id}\n{idempotency_key}"))


class UserCreate(Closed):
    username: Username = Field(
        description=f"1 to {MAX_USERNAME_CHARS} printable characters, no '/'; unique (a second user of "
        "the same name is a 409). It is the default account of the user's workflow jobs."
    )


class UserView(BaseModel):
    id: str
    username: str
    created_at: datetime


class UserList(BaseModel):
    users: list[UserView]
    next_cursor: str | None = None


ShortLabel = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=200), AfterValidator(printable_label), Text
]


class WorkflowJobSpec(Closed):
    """One job of ``POST /workflows/``."""

    _not_taken: ClassVar[dict[str, str]] = {
        "dependency": "a workflow job's parents (parent_indices) are its dependency"
    }

    name: Label = Field(description="The job's name (seed).")
    job_type: ShortLabel | None = Field(default=None, description="What kind of job (seed): 'tiling', 'inference'...")
    branch_id: ShortLabel | None = Field(default=None, description="Which branch of the workflow (seed).")
    parent_indices: Annotated[list[Annotated[StrictInt, Field(ge=0, le=MAX_WORKFLOW_JOBS)]], FailFast()] = Field(
        default_factory=list,
        max_length=MAX_WORKFLOW_JOBS,
        description="Indices of earlier jobs of the list that must COMPLETE before this one starts (seed).",
    )
    script: Annotated[str | None, Text] = Field(
        default=None, description="The bash script; without one the job is a no-op that completes with its parents."
    )
    account: Label | None = Field(default=None, description="Default: the user's name.")
    partition: Label = "default"
    ntasks_per_node: int = Field(default=1, ge=1)
    cpus_per_task: int = Field(default=1, ge=1)
    memory_per_node: Annotated[str, Text] = "512M"
    time_limit: Annotated[str, Text] = "60"
    current_working_directory: Annotated[str, Text] = Field(default=DEFAULT_WORKFLOW_CWD, max_length=4096)
    standard_output: PathText = None
    standard_error: PathText = None
    environment: Annotated[dict[EnvName, EnvValue], FailFast()] = Field(
        default_factory=dict, description=f"At most {MAX_ENV_BYTES} bytes."
    )
    requeue: bool = Field(
        default=False,
        description="As a submit's: if its node is lost while it runs, the job goes back to PENDING and runs "
        "again, and the jobs that wait for it wait for that run (else it ends NODE_FAIL and they are cancelled).",
    )

    def job_spec(self, username: str) -> JobSpec:
        """The submit's ``job`` object this job amounts to (validated like any submit's)."""
        fields: dict[str, Any] = self.model_dump(exclude={"job_type", "branch_id", "parent_indices", "script"})
        fields["account"] = self.account or username
        return JobSpec.model_validate(fields)


class WorkflowRequest(Closed):
    """``POST /workflows/``: the seed's body."""

    user_id: uuid.UUID
    name: ShortLabel = ""
    jobs: Annotated[list[WorkflowJobSpec], FailFast()] = Field(min_length=1, max_length=MAX_WORKFLOW_JOBS)

    def fingerprint(self) -> str:
        """A hash of what was asked, however its JSON was written: a key reused for another workflow
        is told from a retry."""
        return canonical_hash(self.model_dump(mode="json"))

    @model_validator(mode="after")
    def _edges(self) -> WorkflowRequest:
        edges = 0
        for index, job in enumerate(self.jobs):
            seen: set[int] = set()
            for parent in job.parent_indices:
                if parent == index:
                    raise ValueError(f"job {index} lists itself in parent_indices")
                if parent > index:
                    problem = "a later job" if parent < len(self.jobs) else "no job of the list"
                    raise ValueError(
                        f"job {index}: parent index {parent} is {problem}; parents must be earlier jobs of the list"
                    )
                if parent in seen:
                    raise ValueError(f"job {index}: parent index {parent} is listed twice")
                seen.add(parent)
            edges += len(seen)
        if edges > MAX_WORKFLOW_EDGES:
            raise ValueError(f"{edges} parent links in all; a workflow has at most {MAX_WORKFLOW_EDGES}")
        return self


class WorkflowResponse(BaseModel):
    workflow_id: str
    job_count: int
    job_ids: list[str]


class WorkflowJobView(BaseModel):
    job_id: str
    index: int
    name: str
    job_type: str | None = None
    branch_id: str | None = None
    parent_indices: list[int]
    parents: list[str]
    state: str
    reason: str | None = None
    reason_detail: str | None = None
    exit_code: int | None = None
    node: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None


class WorkflowView(BaseModel):
    workflow_id: str
    name: str
    user_id: str
    owner: str
    state: str = Field(description="PENDING, RUNNING, COMPLETED, FAILED or CANCELLED, from its jobs' states")
    job_count: int
    submit_time: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    jobs: list[WorkflowJobView]


class WorkflowSummary(BaseModel):
    workflow_id: str
    name: str
    user_id: str
    owner: str
    job_count: int
    submit_time: datetime


class WorkflowList(BaseModel):
    workflows: list[WorkflowSummary]
    next_cursor: str | None = None


class WorkflowCancelResponse(BaseModel):
    workflow_id: str
    cancel_requested: list[str] = Field(description="the job ids asked to cancel: those that had not ended")
