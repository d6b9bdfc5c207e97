"""HTTP bodies of the gateway: the seed's payloads, kept field for field."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from conductor_contracts.parsing import parse_memory_mb, parse_time_limit_seconds

# A name becomes part of file names (%x) and a NATS-safe label: keep it printable and short.
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f/]+$")
]


class JobSpec(BaseModel):
    """The ``job`` object of ``POST /jobs/submit`` (seed README)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    account: Name
    partition: Name = "default"
    ntasks_per_node: int = Field(default=1, ge=1, le=4096)
    cpus_per_task: int = Field(default=1, ge=1, le=4096)
    memory_per_node: str = "1G"
    time_limit: str = "60"
    current_working_directory: str = Field(min_length=1)
    standard_output: str | None = None
    standard_error: str | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    dependency: str | None = None

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

    @field_validator("current_working_directory")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value

    @field_validator("environment")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or "=" in key or "\x00" in key:
                raise ValueError(f"invalid environment variable name {key!r}")
        return value

    @field_validator("dependency")
    @classmethod
    def _no_dependency_yet(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("job dependencies are not supported yet")
        return value

    @property
    def memory_mb(self) -> int:
        return parse_memory_mb(self.memory_per_node)

    @property
    def time_limit_s(self) -> int | None:
        return parse_time_limit_seconds(self.time_limit)

    @property
    def cpus(self) -> int:
        return self.ntasks_per_node * self.cpus_per_task


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job: JobSpec
    script: str

    @field_validator("script")
    @classmethod
    def _script(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("script is empty")
        if "\x00" in value:
            raise ValueError("script contains a NUL byte")
        return value


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


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None = None


class NodeView(BaseModel):
    name: str
    cpus: int
    memory_mb: int
    partitions: list[str]
    state: str
    registered_at: datetime
    cpus_alloc: int = 0
    memory_alloc_mb: int = 0
    # sinfo's view: idle (nothing running), mixed, allocated (no CPU left)
    allocation: str = "idle"


class NodeList(BaseModel):
    nodes: list[NodeView]
