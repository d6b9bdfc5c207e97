"""The event catalogue as data, for what lists or documents events rather than handles one: every
class of the ``events.Event`` union by its type name, and the subjects each can be published on.

Both are derived (from the union and from ``subjects.subject_for``), so an event added to the
contracts is listed here without anyone typing its name or its subject again.
"""

from __future__ import annotations

from typing import Any, get_args

from conductor_contracts import events as ev
from conductor_contracts import subjects

EVENT_CLASSES: tuple[type[ev.EventBase], ...] = get_args(get_args(ev.Event)[0])
EVENT_TYPES: dict[str, type[ev.EventBase]] = {cls.model_fields["type"].default: cls for cls in EVENT_CLASSES}

# The fields that become a token of a subject; in a pattern each stands as ``{name}``.
_SUBJECT_FIELDS = ("job_id", "node", "workflow_id", "user_id")


def subject_patterns(cls: type[ev.EventBase]) -> tuple[str, ...]:
    """Every subject an event of ``cls`` can have, its ids shown as ``{job_id}``, ``{node}``...
    (JobCancelled has two: the scheduler's for a pending job, an executor's for a running one;
    NodeDrainRequested the gateway's and the node's own)."""
    placeholders: dict[str, Any] = {name: f"{{{name}}}" for name in _SUBJECT_FIELDS if name in cls.model_fields}
    variants = [placeholders]
    if "node" in cls.model_fields and not cls.model_fields["node"].is_required():
        variants.append(placeholders | {"node": None})
    if "by_node" in cls.model_fields:  # a drain the node's executor asks for is on its own subject
        variants += [fields | {"by_node": True} for fields in variants]
    found: dict[str, None] = {}
    for fields in variants:
        # Built without validation: the placeholders are not valid ids, and only the subject is wanted.
        event: Any = cls.model_construct(**fields)
        for by_scheduler in (False, True):
            found[subjects.subject_for(event, by_scheduler=by_scheduler)] = None
    return tuple(found)
