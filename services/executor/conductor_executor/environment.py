"""What a job's process sees: its environment (Slurm's variables and ``CONDUCTOR_*`` twins), files
and CPU cores. Pure functions of the job and the node."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from conductor_contracts import events as ev
from conductor_contracts.paths import output_files

# The executor's own settings must not leak into jobs.
_PRIVATE_PREFIXES = ("CONDUCTOR_", "NATS_URL", "DATABASE_URL")


@dataclass(frozen=True)
class JobFiles:
    stdout: str
    stderr: str  # equal to stdout when the user asked for none: Slurm merges them then


def job_files(job_id: int, job: ev.JobSubmitted) -> JobFiles:
    stdout, stderr = output_files(job_id, job)
    return JobFiles(stdout, stderr or stdout)


def inherited(base: Mapping[str, str]) -> dict[str, str]:
    """What every job inherits of the executor's environment: all but its own settings."""
    return {k: v for k, v in base.items() if not k.startswith(_PRIVATE_PREFIXES)}


def job_environment(
    base: Mapping[str, str], job_id: int, job: ev.JobSubmitted, placement: ev.JobPlaced
) -> dict[str, str]:
    """``base``: what jobs inherit (``inherited``), not changed."""
    env = inherited(base)
    env.update(job.environment)
    values = {
        "JOB_ID": str(job_id),
        "JOB_NAME": job.name,
        "JOB_ACCOUNT": job.account,
        "JOB_PARTITION": job.partition,
        "JOB_NODELIST": placement.node,
        "JOB_NUM_NODES": "1",
        "JOB_CPUS_PER_NODE": str(len(placement.cores)),
        "CPUS_PER_TASK": str(job.cpus_per_task),
        "NTASKS": str(job.ntasks_per_node),
        "NTASKS_PER_NODE": str(job.ntasks_per_node),
        "MEM_PER_NODE": str(job.memory_mb),
        "SUBMIT_DIR": job.working_directory,
        "CPU_BIND_LIST": ",".join(str(c) for c in placement.cores),
        # How many times the job was requeued before this run: a rerun can tell it is one.
        "RESTART_COUNT": str(placement.run),
    }
    env.update({f"SLURM_{k}": v for k, v in values.items()})
    env["SLURM_JOBID"] = str(job_id)
    env["SLURMD_NODENAME"] = placement.node
    env.update({f"CONDUCTOR_{k}": v for k, v in values.items()})
    return env


def host_cpus(cores: Sequence[int], allowed: Sequence[int]) -> set[int]:
    """The machine's CPUs for the node's logical cores. A node may announce more cores than the
    machine has (oversubscription on a laptop); then cores wrap around the allowed CPUs."""
    ordered = sorted(allowed)
    return {ordered[c % len(ordered)] for c in cores} if ordered else set()


def exit_code_of(returncode: int) -> int:
    """A process killed by a signal reports ``-signal``; shells and Slurm say 128 + signal."""
    return returncode if returncode >= 0 else 128 - returncode
