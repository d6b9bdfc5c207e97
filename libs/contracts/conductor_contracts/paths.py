"""Where a job's output goes: Slurm's filename patterns, expanded the same way by every service."""

from __future__ import annotations

import posixpath

from conductor_contracts.events import JobSubmitted

DEFAULT_OUTPUT = "slurm-%j.out"


def expand_pattern(pattern: str, *, job_id: int, name: str, account: str) -> str:
    """Slurm's ``%j`` (job id), ``%x`` (job name), ``%u`` (user/account), ``%%`` (a literal %)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "%" and i + 1 < len(pattern):
            code = pattern[i + 1]
            replacement = {"j": str(job_id), "x": name, "u": account, "%": "%"}.get(code)
            if replacement is not None:
                out.append(replacement)
                i += 2
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def output_path(pattern: str | None, *, job_id: int, name: str, account: str, cwd: str) -> str:
    """The absolute path of an output file; relative patterns are taken from the working directory."""
    expanded = expand_pattern(pattern or DEFAULT_OUTPUT, job_id=job_id, name=name, account=account)
    return posixpath.normpath(posixpath.join(cwd, expanded))


def output_files(job_id: int, job: JobSubmitted) -> tuple[str, str | None]:
    """A submitted job's stdout path and, when the user gave one, its stderr path."""
    stdout = output_path(
        job.standard_output, job_id=job_id, name=job.name, account=job.account, cwd=job.working_directory
    )
    if not job.standard_error:
        return stdout, None
    stderr = output_path(
        job.standard_error, job_id=job_id, name=job.name, account=job.account, cwd=job.working_directory
    )
    return stdout, stderr
