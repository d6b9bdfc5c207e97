from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Self

from pydantic import Field, field_validator, model_validator

from conductor_contracts import events as ev
from conductor_contracts.api import Label
from conductor_contracts.parsing import parse_memory_mb
from conductor_executor import compiled
from conductor_platform.settings import CommonSettings


def machine_memory_mb() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))


def machine_cpus() -> int:
    return len(os.sched_getaffinity(0))


class ExecutorSettings(CommonSettings):
    node: str = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "node1")
    cpus: int = Field(default_factory=machine_cpus, ge=1, le=ev.MAX_NODE_CPUS)
    memory: str = Field(default_factory=lambda: f"{machine_memory_mb()}M")
    # As a job names its partition: a node in none, or in one no submit can name, takes no work.
    partitions: list[Label] = Field(default_factory=lambda: ["default"], min_length=1)
    state_dir: Path = Path("var/executor")
    # Folders no job may name as its working directory or output, besides the state folder
    # (``conductor up`` adds its var folder: NATS's log and PostgreSQL's data are there).
    protected_dirs: list[Path] = Field(default_factory=list)
    kill_grace_s: float = Field(default=10.0, ge=0, le=86400)  # 1e300: never a SIGKILL
    # How often a running job's memory is sampled against its memory_per_node.
    memory_poll_s: float = Field(default=1.0, ge=0.05, le=3600)  # 1e300: never sampled
    # The end of each output file kept in the object store when a job ends.
    output_max_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    # A placement or cancel that fails this many deliveries (other than by NATS being away) is
    # given up: logged, its job reported FAILED, and not delivered again.
    max_deliveries: int = Field(default=5, ge=1)
    # A stop (SIGTERM, SIGINT) leaves running jobs to their supervisors, for the next start to take
    # over; set, it stops them first (``conductor up`` sets it: its Ctrl-C leaves nothing running).
    stop_jobs_on_exit: bool = False
    # A finished job's folder (its script and records) is removed this long after its outcome, once
    # the outcome is published and its placement acked (``retention.py``); 0: at the next sweeps.
    job_retention_s: float = Field(default=600.0, ge=0, allow_inf_nan=False)
    # How often finished jobs' folders are looked for.
    job_sweep_s: float = Field(default=60.0, ge=0.05, allow_inf_nan=False)
    # How often what jobs that ended by themselves left running (a ``setsid`` daemon) is looked for
    # and killed: one look at /proc for every job that ended since.
    leftover_scan_s: float = Field(default=5.0, ge=0.05, allow_inf_nan=False)
    # What starts each job and records how it ended (``compiled.py``): ``auto`` (compiled here when a C
    # compiler is at hand, else the shell form), ``shell``, or the absolute path of a built one.
    job_supervisor: str = compiled.AUTO
    # A job's JobStarted is held back this long: a run that ends sooner reports its pid and start with
    # its outcome instead, one event fewer for every short job (the read model shows it RUNNING from
    # its placement either way); 0: at once.
    start_report_delay_s: float = Field(default=0.5, ge=0, le=60, allow_inf_nan=False)

    @field_validator("node", mode="before")
    @classmethod
    def _node_name(cls, value: str) -> str:
        # The name is a NATS subject token: no dots, spaces or wildcards. Host and Kubernetes node
        # names often have dots; they become dashes.
        value = str(value).replace(".", "-")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
            raise ValueError(f"invalid node name {value!r}: use letters, digits, '-' and '_'")
        return value

    @field_validator("job_supervisor")
    @classmethod
    def _supervisor(cls, value: str) -> str:
        if value in (compiled.AUTO, compiled.SHELL):
            return value
        path = Path(value)
        if not path.is_absolute():
            raise ValueError(f"must be {compiled.AUTO!r}, {compiled.SHELL!r} or the absolute path of a supervisor")
        wrong = compiled.check(path)
        if wrong is not None:
            raise ValueError(f"{value} does not supervise a job as it must: {wrong}")
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        parse_memory_mb(value)
        return value

    @model_validator(mode="after")
    def _beats_within_the_silence(self) -> Self:
        # Heartbeats 45 s apart against a 30 s silence: the node was declared lost between two of them,
        # and its running jobs ended NODE_FAIL, again and again.
        if self.node_lost_after_s < 1.5 * self.heartbeat_s:
            raise ValueError(
                f"CONDUCTOR_NODE_LOST_AFTER_S ({self.node_lost_after_s:g}) must be at least 1.5 times "
                f"CONDUCTOR_HEARTBEAT_S ({self.heartbeat_s:g}): the node would be declared lost between two beats"
            )
        return self

    @property
    def memory_mb(self) -> int:
        return parse_memory_mb(self.memory)

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / self.node / "jobs"

    @property
    def outbox_dir(self) -> Path:
        return self.state_dir / self.node / "outbox"

    @property
    def outbox_spares_dir(self) -> Path:
        """Published outbox files, kept to be written again (``outbox.py``)."""
        return self.state_dir / self.node / "outbox-spares"
