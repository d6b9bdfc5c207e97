"""A finished job's output, copied into the NATS object store so any gateway can serve it.

The copy is made by the outbox publisher right before it publishes the job's outcome (see
``service.py``), so output comes before the outcome and survives NATS outages and executor restarts
the way the outcome does. Where a job's files are is recorded in its marker folder when it starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from pathlib import Path

from nats.js.object_store import ObjectStore

from conductor_contracts import subjects
from conductor_executor.environment import JobFiles
from conductor_platform.retry import transient

log = logging.getLogger("conductor.executor.output")

RECORD = "output.json"


def record_files(folder: Path, files: JobFiles) -> None:
    (folder / RECORD).write_text(json.dumps({"stdout": files.stdout, "stderr": files.stderr}))


def recorded_files(folder: Path) -> JobFiles | None:
    """The files a job started with, or None if it never got that far (or the record is damaged)."""
    try:
        data = json.loads((folder / RECORD).read_text())
        stdout, stderr = data["stdout"], data["stderr"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(stdout, str) or not isinstance(stderr, str):
        return None
    return JobFiles(stdout, stderr)


def read_tail(path: str, max_bytes: int) -> bytes | None:
    """The last ``max_bytes`` of a regular file (a log's end is what people look for), or None."""
    try:
        # Non-blocking: a FIFO planted where the output was would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        os.lseek(fd, max(0, info.st_size - max_bytes), os.SEEK_SET)
        chunks, left = [], max_bytes
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


async def upload(store: ObjectStore, job_id: int, files: JobFiles, max_bytes: int) -> None:
    """Best effort for the files (missing or empty: nothing stored); NATS being away raises, so the
    caller tries again later. Any other refusal is logged: the outcome matters more than its output."""
    streams = {"stdout": files.stdout}
    if files.stderr != files.stdout:
        streams["stderr"] = files.stderr
    for stream, path in streams.items():
        data = await asyncio.to_thread(read_tail, path, max_bytes)
        if not data:
            continue
        try:
            await store.put(subjects.output_object(job_id, stream), data)
        except Exception as err:
            if transient(err):
                raise
            log.warning("could not upload output", extra={"job_id": job_id, "stream": stream, "error": str(err)})
