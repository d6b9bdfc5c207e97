"""HTTP bodies of the gateway: the seed's payloads, kept field for field.

Every value accepted here must fit everything downstream of the gateway: the read models in
PostgreSQL (int32 columns; no NUL in text or JSON), the OS (paths, environment) and bash. A value
that one of them refuses would be in the log for good, and stop every projector that reaches it.
So each field is bounded here, and the bounds are in its description (the OpenAPI document).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    FailFast,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from conductor_contracts import dependencies
from conductor_contracts.parsing import MAX_MEMORY_MB, parse_memory_mb, parse_time_limit_seconds, shown
from conductor_contracts.paths import (
    DEFAULT_OUTPUT,
    PATH_MAX_BYTES,
    output_pattern_problem,
    path_problem,
    system_path_problem,
)

MAX_CPUS = 4096
MAX_LABEL_CHARS = 200
# Linux refuses one environment string over MAX_ARG_STRLEN (128 KiB) and all of argv + envp over
# ARG_MAX (2 MiB by default); the executor adds its own and the Slurm variables to what a job sends.
MAX_ENV_VARS = 1024
MAX_ENV_BYTES = 128 * 1024
MAX_ENV_NAME_CHARS = 255


def _text(value: object) -> object:
    """First check of every string: no NUL (PostgreSQL text and JSON, and C strings, cannot hold it)
    and nothing that cannot be written as UTF-8 (a lone surrogate, which JSON's \\ud800 can carry)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain a NUL character")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text: it holds a lone surrogate") from None
    return value


Text = BeforeValidator(_text)


def printable_label(value: str) -> str:
    if not value.isprintable() or "/" in value:
        raise ValueError(f"{shown(value)} may hold printable characters only, and no '/'")
    return value


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError(f"{shown(value)} may hold printable characters only")
    return value


# A name becomes part of file names (%x, %u): printable, no '/', short.
Label = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_LABEL_CHARS),
    AfterValidator(printable_label),
    Text,
]
LABEL_RULE = f"1 to {MAX_LABEL_CHARS} printable characters, no '/'"

PathText = Annotated[str | None, Field(max_length=PATH_MAX_BYTES), Text]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=MAX_ENV_NAME_CHARS), Text]
EnvValue = Annotated[str, Text]

OUTPUT_RULE = (
    "Relative to current_working_directory; %j, %x, %u and %% are expanded. Once expanded (with any "
    f"job id), the path must fit Linux: at most {PATH_MAX_BYTES} bytes, each component at most 255, "
    "no control characters, and it must name a file."
)


class Closed(BaseModel):
    """An object of a request: its fields and nothing else. Unknown fields are refused in one error
    naming a few, not one error each (``extra="forbid"``): 400,000 unknown keys (a 4 MB body) held
    the gateway's event loop 5 s, every request waiting. They are kept aside only to be refused: no
    instance ever holds one."""

    model_config = ConfigDict(extra="allow", frozen=True, json_schema_extra={"additionalProperties": False})
    # Fields a client may well send that this object does not take, with why (the 422 says it).
    _not_taken: ClassVar[dict[str, str]] = {}

    @model_validator(mode="after")
    def _no_unknown_fields(self) -> Self:
        if unknown := self.__pydantic_extra__:
            for name, why in self._not_taken.items():
                if name in unknown:
                    raise ValueError(f"{name!r} is not taken here: {why}")
            named = ", ".join(shown(str(key)) for key in list(unknown)[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise ValueError(f"unknown field {named}{more}; the fields are {', '.join(type(self).model_fields)}")
        return self


class JobSpec(Closed):
    """The ``job`` object of ``POST /jobs/submit`` (seed README)."""

    name: Label = Field(description=f"The job's name: {LABEL_RULE}.")
    account: Label = Field(description=f"Who submits: {LABEL_RULE}.")
    partition: Label = Field(default="default", description=f"Where to run: {LABEL_RULE}.")
    ntasks_per_node: int = Field(default=1, ge=1, le=MAX_CPUS, description=f"1 to {MAX_CPUS}.")
    cpus_per_task: int = Field(
        default=1,
        ge=1,
        le=MAX_CPUS,
        description=f"1 to {MAX_CPUS}; ntasks_per_node x cpus_per_task (the CPUs on the node) at most {MAX_CPUS}.",
    )
    memory_per_node: Annotated[str, Text] = Field(
        default="1G",
        description=f"'512M', '8G', '1T', 2048K or a number of megabytes; 1M to {MAX_MEMORY_MB}M (just under 2048T).",
    )
    time_limit: Annotated[str, Text] = Field(
        default="60",
        description="Minutes ('60'), 'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM', 'D-HH:MM:SS' or 'UNLIMITED'; "
        "at most 365 days.",
    )
    current_working_directory: Annotated[str, Text] = Field(
        min_length=1,
        max_length=PATH_MAX_BYTES,
        description=f"An absolute path: at most {PATH_MAX_BYTES} bytes, each component at most 255, "
        "no control characters.",
    )
    standard_output: PathText = Field(default=None, description=f"Default 'slurm-%j.out'. {OUTPUT_RULE}")
    standard_error: PathText = Field(default=None, description=f"Default: joined to stdout. {OUTPUT_RULE}")
    environment: Annotated[dict[EnvName, EnvValue], FailFast()] = Field(
        default_factory=dict,
        description=f"Variables for the job: names are shell names ([A-Za-z_][A-Za-z0-9_]*), values any text "
        f"without NUL; at most {MAX_ENV_VARS} of them and {MAX_ENV_BYTES // 1024} KiB in all.",
    )
    requeue: bool = Field(
        default=False,
        description="Slurm's --requeue: if its node is lost while it runs, the job goes back to PENDING (and "
        "runs again from the start) instead of ending NODE_FAIL.",
    )
    dependency: Annotated[str | None, Field(max_length=64 * 1024), Text] = Field(
        default=None,
        description="sbatch's syntax: 'afterok:12:13', 'afterany:12', 'after:12' (started), 'afternotok:12', "
        "'singleton', joined by ',' (all must hold) or '?' (one is enough). Each job must exist. A job whose "
        "dependency can no longer hold is cancelled (reason DependencyNeverSatisfied).",
    )

    @field_validator("memory_per_node")
    @classmethod
    def _memory(cls, value: str) -> str:
        parse_memory_mb(value)
        return value

    @field_validator("time_limit")
    @classmethod
    def _time(cls, value: str) -> str:
        parse_time_limit_seconds(value)
        return value

    @field_validator("cpus_per_task")
    @classmethod
    def _cpus(cls, value: int, info: ValidationInfo) -> int:
        tasks = info.data.get("ntasks_per_node")
        if isinstance(tasks, int) and tasks * value > MAX_CPUS:
            raise ValueError(
                f"ntasks_per_node x cpus_per_task is {tasks * value} CPUs; one node gives a job at most {MAX_CPUS}"
            )
        return value

    @field_validator("current_working_directory")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path")
        if problem := path_problem(value) or system_path_problem(value):
            raise ValueError(f"the path {problem}")
        return value

    @field_validator("standard_output", "standard_error")
    @classmethod
    def _output(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            return value
        if problem := path_problem(value):
            raise ValueError(f"the path {problem}")
        name, account, cwd = (info.data.get(key) for key in ("name", "account", "current_working_directory"))
        # Only when the fields it expands are valid themselves; otherwise those are the errors.
        if not (isinstance(name, str) and isinstance(account, str) and isinstance(cwd, str)):
            return value
        if problem := output_pattern_problem(value, name=name, account=account, cwd=cwd):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _default_output(self) -> JobSpec:
        # A field validator does not see a default: 'slurm-%j.out' under a long working directory
        # must be refused here, not fail when the executor opens it.
        if self.standard_output is None:
            problem = output_pattern_problem(
                DEFAULT_OUTPUT, name=self.name, account=self.account, cwd=self.current_working_directory
            )
            if problem:
                raise ValueError(f"standard_output (by default '{DEFAULT_OUTPUT}'): {problem}")
        return self

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_ENV_VARS:
            raise ValueError(f"{len(value)} variables; at most {MAX_ENV_VARS}")
        size = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in value.items())  # NAME=value\0
        if size > MAX_ENV_BYTES:
            raise ValueError(f"{size} bytes in all; at most {MAX_ENV_BYTES}")
        return value

    @field_validator("dependency")
    @classmethod
    def _dependency(cls, value: str | None) -> str | None:
        if value:
            dependencies.parse(value)
        return value

    @property
    def parsed_dependency(self) -> dependencies.Dependency | None:
        return dependencies.parse(self.dependency) if self.dependency else None

    @property
    def memory_mb(self) -> int:
        return parse_memory_mb(self.memory_per_node)

    @property
    def time_limit_s(self) -> int | None:
        return parse_time_limit_seconds(self.time_limit)

    @property
    def cpus(self) -> int:
        return self.ntasks_per_node * self.cpus_per_task


# sbatch's own refusal: bash reads the CR as part of each line ("exit: 0\r: numeric argument
# required", commands not found), so such a script fails at its first line, after its wait in the queue.
DOS_LINE_BREAKS = "script contains DOS line breaks (\\r\\n) instead of the expected UNIX line breaks (\\n)"


def script_problem(script: str) -> str | None:
    """Why a script cannot be run, or None."""
    if not script.replace("\ufeff", "").strip():  # a byte order mark alone is no script either
        return "script is empty"
    if "\r\n" in script:
        return DOS_LINE_BREAKS
    return None


class SubmitRequest(Closed):
    job: JobSpec
    script: Annotated[str, Text] = Field(
        description="The bash script: not empty, no NUL, UNIX line breaks (no \\r\\n, as sbatch); its size limit "
        "is the gateway's CONDUCTOR_MAX_SCRIPT_BYTES."
    )

    @field_validator("script")
    @classmethod
    def _script(cls, value: str) -> str:
        if (problem := script_problem(value)) is not None:
            raise ValueError(problem)
        return value

    def fingerprint(self) -> str:
        """A hash of what was asked, the same for the same request however its JSON was written (key
        order, defaults left out): an Idempotency-Key reused for another request is told from a retry."""
        data = self.model_dump(mode="json")
        for optional in ("standard_output", "standard_error", "dependency"):  # "" means the same as absent
            data["job"][optional] = data["job"][optional] or None
        return canonical_hash(data)


def canonical_hash(data: object) -> str:
    """A hash of JSON-able ``data`` that does not depend on how its JSON was written (key order)."""
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ErrorBody(BaseModel):
    """Every error: ``{"detail": "..."}`` (422 gives FastAPI's list of field errors)."""

    detail: str


class SubmitResponse(BaseModel):
    job_id: str


class CancelResponse(BaseModel):
    job_id: str
    state: str
    detail: str


class JobView(BaseModel):
    """``GET /jobs/query/{id}``."""

    job_id: str
    name: str
    account: str
    partition: str
    state: str
    reason: str | None = None
    reason_detail: str | None = None
    exit_code: int | None = None
    node: str | None = None
    cores: list[int] = Field(default_factory=list)
    cpus: int
    memory_mb: int
    time_limit_s: int | None = None
    working_directory: str
    standard_output: str
    standard_error: str | None = None
    submit_time: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    cancel_requested: bool = False
    message: str | None = None
    dependency: str | None = None
    requeue: bool = False
    restarts: int = Field(default=0, description="how many times it was requeued")
    workflow_id: str | None = None
    workflow_index: int | None = None
    branch_id: str | None = None
    job_type: str | None = None
    parents: list[str] = Field(default_factory=list, description="the job ids of its parents in its workflow")


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None = None


class NodeView(BaseModel):
    name: str
    cpus: int
    memory_mb: int
    partitions: list[str]
    state: str = Field(
        description="UP; DRAINING (drained, jobs still running) or DRAINED; DOWN (lost: its executor went silent)"
    )
    reason: str | None = Field(default=None, description="why it is drained or down")
    drain: str | None = Field(
        default=None,
        description="set while the node is drained, to the drain's reason (maybe empty), also while it is DOWN: "
        "a drained node that is lost comes back drained",
    )
    registered_at: datetime
    cpus_alloc: int = 0
    memory_alloc_mb: int = 0
    # sinfo's view: idle (nothing running), mixed, allocated (no CPU left)
    allocation: str = "idle"


class DrainRequest(Closed):
    reason: Annotated[
        str, StringConstraints(strip_whitespace=True, max_length=MAX_LABEL_CHARS), AfterValidator(_printable), Text
    ] = Field(default="", description=f"Why (shown in GET /nodes): at most {MAX_LABEL_CHARS} printable characters.")


class NodeActionResponse(BaseModel):
    name: str
    detail: str


class NodeList(BaseModel):
    nodes: list[NodeView]
