"""One executor per node: a second one with the node's name is refused at its start.

Two executors of one node share its placement consumer: a placement one of them fetched and was slow
to acknowledge went to the other, and both ran it (review of 2026-12-02: two jobs ran twice at once);
each cancel reached one of them, and a cancel that reached the other was dropped; the live one kept
the node's heartbeat while the dead one's jobs stayed RUNNING for ever. Nothing told them apart.

- On one machine, with one state folder, a lock on the node's state folder (held while the process
  lives) refuses the second.
- Elsewhere (two hosts whose names agree up to their first dot, the default node name), the heartbeat
  tells: it names the writer's instance, an id kept in the node's state folder, so an executor that
  restarts on the same folder is the same instance. A start that finds another instance's heartbeat
  watches the key for a while longer than a beat: a beat of that instance meanwhile is a live twin.
- One that was frozen while another took the node over finds, thawed, the other's beat over its own
  (``heartbeat.Replaced``) and gives the node up (``Executor.taken_over``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import nats.js.errors
from nats.js.kv import KeyValue

from conductor_contracts import heartbeats
from conductor_platform.folder_lock import holder, lock_folder

log = logging.getLogger("conductor.executor")

LOCK = "executor.lock"
INSTANCE = "instance"


class TwinExecutor(Exception):
    """Another executor of this node runs: this one must not."""


# How long a start waits for the lock before it is refused. An executor killed while it started a
# job leaves the lock to that job's supervisor for as long as the supervisor takes to execute (the
# lock's descriptor closes on exec, not at the fork): milliseconds, seconds on a loaded machine,
# and a next executor started at once was refused (seen in CI).
LOCK_WAIT_S = 3.0


async def lock_node_folder(folder: Path, wait_s: float = LOCK_WAIT_S) -> int:
    """The open, locked lock file of the node's state folder (kept for the process's life; not
    inherited by jobs). Raises TwinExecutor when another process still holds it after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while (fd := lock_folder(folder, LOCK)) is None:
        if time.monotonic() >= deadline:
            raise TwinExecutor(f"another executor (pid {holder(folder, LOCK)}) uses the state folder {folder}")
        await asyncio.sleep(0.02)
    return fd


_ID = re.compile(r"^[0-9a-f]{32}$")


def instance_id(folder: Path) -> str:
    """This node's executor instance: the same across restarts on this state folder (a file that does
    not hold one, edited or damaged, is replaced: the id goes into every registration)."""
    path = folder / INSTANCE
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if _ID.match(known := path.read_text().strip()):
            return known
    made = uuid.uuid4().hex
    with contextlib.suppress(OSError):  # unwritable: a new id each start, and a wait at each
        path.write_text(made + "\n")
    return made


class TookOver(NamedTuple):
    """The node's heartbeat key as this executor's start left it."""

    replaced: str | None  # the instance this one replaces (its beat was the node's last), or None
    revision: int | None  # the key's revision after this one's first beat: the next is written over it


async def refuse_twin(kv: KeyValue, key: str, mine: str, watch_s: float, first: bytes) -> TookOver:
    """Raises TwinExecutor if another instance writes the node's heartbeat within ``watch_s``, once
    its last one is found there (a heartbeat of this instance, or none: nothing to wait for); then
    writes ``first``, this instance's first beat, only over the last value it saw: two that started
    together both saw no live twin, and only one of them can write over that value."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:  # no key, or deleted: no one beats for this node
        return TookOver(None, await _take_over(kv, key, mine, first, None))
    other = heartbeats.decode(entry.value).instance
    if not other or other == mine:
        return TookOver(None, await _take_over(kv, key, mine, first, entry.revision))
    log.info(
        "the node's last heartbeat is another executor's: waiting to see whether it still beats",
        extra={"key": key, "watch_s": watch_s},
    )
    seen = entry.revision
    deadline = asyncio.get_running_loop().time() + watch_s
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        await asyncio.sleep(min(0.25, left))  # a beat stays readable until the next one: 2 s apart
        try:
            entry = await kv.get(key)
        except Exception:
            continue
        beat = heartbeats.decode(entry.value)
        if entry.revision != seen and beat.instance not in (None, mine):
            raise TwinExecutor(f"another executor of this node is running ({beat.where}): a node has one executor")
        seen = entry.revision
    return TookOver(other, await _take_over(kv, key, mine, first, seen))


async def _take_over(kv: KeyValue, key: str, mine: str, first: bytes, last: int | None) -> int | None:
    """The revision of the key after this executor's first beat (None: not known)."""
    try:
        if last is None:
            return await kv.create(key, first)
        return await kv.update(key, first, last=last)
    except nats.js.errors.KeyWrongLastSequenceError:
        entry = await kv.get(key)
        beat = heartbeats.decode(entry.value)
        if beat.instance not in (None, mine):
            raise TwinExecutor(
                f"another executor of this node started at the same moment ({beat.where}): a node has one executor"
            ) from None
        return entry.revision
