"""Public subjects: every event of the log again, on a subject that says what it concerns, so that a
subscriber filters by event type, account, workflow, job or node with a wildcard, decoding nothing.

    conductor-public.job.<type>.<account>.<workflow>.<job>     job events (workflow ``-`` if none)
    conductor-public.workflow.<type>.<owner>.<workflow>         WorkflowSubmitted
    conductor-public.node.<type>.<node>                         node events
    conductor-public.user.<type>.<user>                         UserCreated

    conductor-public.job.JobCompleted.>                         every completion
    conductor-public.job.*.alice.>                              everything about alice's jobs
    conductor-public.job.*.*.<workflow>.*                       one workflow's jobs
    conductor-public.job.*.*.*.1042                             one job

They are kept in their own stream (``CONDUCTOR_PUBLIC``, outside the log's ``conductor.>``), each
message the event's JSON as in the log, with ``Conductor-Seq``: its sequence in the log (the job id of
a JobSubmitted). The log of record stays as it is: its subjects say who wrote an event, which is what
fencing and the services' consumers select on.

A token that a subject cannot hold as it is (a '.', '*', '>', a space, anything but ``[-_A-Za-z0-9]``)
is written ``x-`` and its UTF-8 in hex: ``alice`` stays ``alice``, ``a.b`` becomes ``x-612e62``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from conductor_contracts import events as ev

ROOT = "conductor-public"
STREAM = "CONDUCTOR_PUBLIC"
ALL = f"{ROOT}.>"
SEQ_HEADER = "Conductor-Seq"
# The log the event was published from (its stream's creation time): a log stream deleted and made
# again starts its sequences over, and the public copies of the old one must not pass for its events.
LOG_HEADER = "Conductor-Log"
NO_WORKFLOW = "-"
_PLAIN = re.compile(r"^[-_A-Za-z0-9]{1,200}$")


def token(text: str) -> str:
    """``text`` as one subject token, the same for the same text, never ambiguous with another."""
    if _PLAIN.match(text) and not text.startswith("x-"):
        return text
    return "x-" + text.encode("utf-8", "surrogatepass").hex()


@dataclass(frozen=True)
class JobContext:
    """What a job's events do not carry themselves: from its JobSubmitted."""

    account: str
    workflow_id: str | None


def job_context(submitted: ev.JobSubmitted) -> JobContext:
    return JobContext(submitted.account, submitted.workflow_id)


def job_id_of(seq: int, event: ev.Event) -> int | None:
    if isinstance(event, ev.JobSubmitted):
        return seq
    job_id = getattr(event, "job_id", None)
    return job_id if isinstance(job_id, int) else None


def subject(seq: int, event: ev.Event, job: JobContext | None) -> str:
    """The public subject of the event at ``seq``; ``job`` is its job's context (None: unknown)."""
    kind = event.type
    match event:
        case ev.WorkflowSubmitted():
            return f"{ROOT}.workflow.{kind}.{token(event.owner)}.{token(event.workflow_id)}"
        case ev.UserCreated():
            return f"{ROOT}.user.{kind}.{token(event.user_id)}"
        case (
            ev.NodeRegistered() | ev.NodeLost() | ev.NodeDrained() | ev.NodeDrainRequested() | ev.NodeResumeRequested()
        ):
            return f"{ROOT}.node.{kind}.{token(event.node)}"
    job_id = job_id_of(seq, event)
    account = token(job.account) if job is not None else "x-"  # "x-": the empty name, an unknown job
    workflow = token(job.workflow_id) if job is not None and job.workflow_id else NO_WORKFLOW
    return f"{ROOT}.job.{kind}.{account}.{workflow}.{job_id if job_id is not None else 0}"


def pattern(cls: type[ev.EventBase]) -> str:
    """The public subject of an event of ``cls``, its tokens shown as ``{account}``, ``{job_id}``..."""
    kind = cls.model_fields["type"].default
    if cls is ev.WorkflowSubmitted:
        return f"{ROOT}.workflow.{kind}.{{owner}}.{{workflow_id}}"
    if cls is ev.UserCreated:
        return f"{ROOT}.user.{kind}.{{user_id}}"
    if "node" in cls.model_fields and "job_id" not in cls.model_fields:
        return f"{ROOT}.node.{kind}.{{node}}"
    return f"{ROOT}.job.{kind}.{{account}}.{{workflow_id}}.{{job_id}}"
