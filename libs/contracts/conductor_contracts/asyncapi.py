"""The AsyncAPI 3.0 document of the bus, generated from the contracts (never written by hand).

FastStream builds it from one publisher per (event, subject) declared against the Pydantic models of
``events.py``; what AsyncAPI cannot say by itself is added after: the parameters of subjects with
ids in them, and the JetStream stream that stores every subject (an ``x-jetstream`` extension).
"""

from __future__ import annotations

import json
import re
from typing import Any

from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI

from conductor_contracts import public, subjects
from conductor_contracts.catalogue import EVENT_TYPES, subject_patterns

_PARAMETER = re.compile(r"\{(\w+)\}")
_MEANING = {
    "job_id": "the job id (the stream sequence of its JobSubmitted)",
    "node": "the node's name",
    "workflow_id": "the workflow's id (a UUID)",
    "user_id": "the user's id (a UUID)",
    "account": "the job's account, as a subject token (conductor_contracts.public.token)",
    "owner": "the workflow's owner (its user's name), as a subject token",
}


def document(server: str = "localhost:4222", version: str = "0.1.0") -> dict[str, Any]:
    """The document as JSON-ready data; ``server`` is the NATS host:port it names."""
    broker = NatsBroker(f"nats://{server}")
    for type_name, cls in EVENT_TYPES.items():
        patterns = subject_patterns(cls)
        for subject in patterns:
            # A channel per subject, named for its event, and for its writer (gw, sched, exec) when the
            # event has two subjects (the name is part of JSON pointers: no braces, no slashes).
            title = type_name if len(patterns) == 1 else f"{type_name}:{subject.split('.')[1]}"
            broker.publisher(subject, schema=cls, title=title, description=(cls.__doc__ or "").strip() or None)
        # The same event again on its public subject (public.py), in the public stream.
        described = "On the public subjects: " + ((cls.__doc__ or "").strip() or type_name)
        broker.publisher(public.pattern(cls), schema=cls, title=f"{type_name}:public", description=described)
    spec = AsyncAPI(
        broker,
        title="SCNS-Conductor event log",
        version=version,
        description=f"Every event is stored on the JetStream stream {subjects.STREAM} (subjects {subjects.ALL}); "
        "a job's id is the stream sequence of its JobSubmitted.",
        schema_version="3.0.0",
    ).to_specification()
    doc: dict[str, Any] = json.loads(spec.to_json())
    for channel in doc.get("channels", {}).values():
        names = _PARAMETER.findall(channel.get("address", ""))
        if names:
            channel["parameters"] = {name: {"description": _MEANING.get(name, name)} for name in names}
    doc["x-jetstream"] = {
        "stream": subjects.STREAM,
        "subjects": list(subjects.STREAM_SPEC.subjects),
        "duplicate_window_s": subjects.STREAM_SPEC.duplicate_window_s,
        "max_msg_size": subjects.STREAM_SPEC.max_msg_size,
        # Every event again, on subjects naming its type, account, workflow and job (filter with
        # wildcards); each message's Conductor-Seq header is its sequence in the log.
        "public": {"stream": public.STREAM, "subjects": [public.ALL], "sequence_header": public.SEQ_HEADER},
    }
    return doc
