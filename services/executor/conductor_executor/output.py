"""A finished job's output, copied into the NATS object store so any gateway can serve it."""

from __future__ import annotations

import logging
import os
import stat

from nats.js.object_store import ObjectStore

from conductor_contracts import subjects
from conductor_executor.environment import JobFiles

log = logging.getLogger("conductor.executor.output")


def read_tail(path: str, max_bytes: int) -> bytes | None:
    """The last ``max_bytes`` of a regular file (a log's end is what people look for), or None."""
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                return None
            f.seek(max(0, info.st_size - max_bytes))
            return f.read(max_bytes)
    except OSError:
        return None


async def upload(store: ObjectStore, job_id: int, files: JobFiles, max_bytes: int) -> None:
    streams = {"stdout": files.stdout}
    if files.stderr != files.stdout:
        streams["stderr"] = files.stderr
    for stream, path in streams.items():
        data = read_tail(path, max_bytes)
        if data is None:
            continue
        try:
            await store.put(subjects.output_object(job_id, stream), data)
        except Exception as err:  # the outcome matters more than its copy of the output
            log.warning("could not upload output", extra={"job_id": job_id, "stream": stream, "error": str(err)})
