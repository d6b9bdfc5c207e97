"""A job's output files: opened for it by the executor, and copied into the NATS object store when it
ends so any gateway can serve them.

Jobs run as the executor's user, so a job may write wherever that user may; what the executor must
never do is hand out a file the job did not write, or its own files. So:

- a job's stdout/stderr are opened by the executor before the spawn without following a final
  symbolic link and without blocking, and refused unless they are regular files outside ``/proc``,
  ``/sys`` and ``/dev`` (there, paths resolve in the executor's context: ``/dev/stderr`` is its own
  log, ``/proc/self/environ`` its secrets) and outside the executor's own state folder (its outbox
  and records). ``/dev/null`` is the one exception, as in Slurm;
- only then is each file recorded (``output.json`` in the job's marker folder) with the device and
  inode of what was opened; a job that never got its files has no record and nothing is uploaded;
- the copy is read only from a regular file at the recorded path with the recorded inode: a job that
  swaps its output for a symbolic link, a hard link or a renamed-in file at the end gets nothing
  stored for that stream.

The copy is made by the outbox publisher right before it publishes the job's outcome (see
``service.py``), so output comes before the outcome and survives NATS outages and executor restarts
the way the outcome does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nats.js.object_store import ObjectStore

from conductor_contracts import subjects
from conductor_contracts.paths import system_tree
from conductor_executor.environment import JobFiles
from conductor_platform.retry import transient

log = logging.getLogger("conductor.executor.output")

RECORD = "output.json"
NULL_DEVICE = "/dev/null"

# O_NONBLOCK: a FIFO planted where the output goes (by an earlier job: ids are predictable) must not
# hold the executor; O_NOFOLLOW: a final symbolic link could point anywhere, /proc/self included;
# O_NOCTTY: a terminal device must never become the executor's controlling terminal.
# No O_TRUNC: the file is emptied only once it passed every check (a hard link or a bind mount of a
# protected file passes the path's).
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class OutputRefused(ValueError):
    """A job's output path the executor will not open for it, or working directory it will not make;
    the job ends FAILED with this."""


@dataclass(frozen=True)
class OpenedFile:
    """A file the executor opened for a job: its path and the inode it held then."""

    path: str
    dev: int
    ino: int


@dataclass(frozen=True)
class Recorded:
    """What a job started with. None for a stream that went to /dev/null: there is nothing to keep."""

    stdout: OpenedFile | None
    stderr: OpenedFile | None  # the same as stdout when both went to one file


@dataclass
class JobOutputs:
    """Descriptors for a job's process (stderr_fd is stdout_fd when they share a file), and the
    record of what they are. The caller closes them once the child has its copies."""

    stdout_fd: int
    stderr_fd: int
    record: Recorded

    def close(self) -> None:
        os.close(self.stdout_fd)
        if self.stderr_fd != self.stdout_fd:
            os.close(self.stderr_fd)


def _where(fd: int) -> str:
    """Where an open file really is: a path checked as text can still pass through a symbolic link
    to a directory (``/tmp/d/environ`` with ``d -> /proc/self``)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def _is_null_device(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(1, 3)


OWN_FOLDER = "the executor's own folder"
# Folders no job may name, resolved, each with what it is (said in the refusal): the executor's own
# (its outbox, markers and records), and the node's others (CONDUCTOR_PROTECTED_DIRS: under
# ``conductor up``, the folder of NATS's log and PostgreSQL's data).
Protected = Mapping[Path, str]


def _refuse_inside(what: str, path: str, folders: Protected) -> None:
    for folder, name in folders.items():
        if path == str(folder) or path.startswith(str(folder).rstrip("/") + "/"):
            raise OutputRefused(f"{what} is inside {name}")


def _refuse_by_identity(what: str, where: str, folders: Protected) -> None:
    """The same by what the folders are, not their names: a bind mount of a protected folder is the
    same directory (device, inode) under another path."""
    ids: dict[tuple[int, int], str] = {}
    for folder, name in folders.items():
        with contextlib.suppress(OSError):  # not there (yet): nothing in it to protect
            info = os.stat(folder)
            ids[info.st_dev, info.st_ino] = name
    for ancestor in (Path(where), *Path(where).parents):
        try:
            info = os.stat(ancestor)
        except OSError:
            continue
        if (found := ids.get((info.st_dev, info.st_ino))) is not None:
            raise OutputRefused(f"{what} is inside {found} (as {ancestor})")


def _open_one(stream: str, path: str, folders: Protected) -> tuple[int, OpenedFile | None]:
    if path != NULL_DEVICE and system_tree(path) is not None:
        raise OutputRefused(f"{stream} {path!r} is under /proc, /sys or /dev: only /dev/null may be named there")
    # Before the open, which may create it: the executor's outbox, markers and records are not a job's.
    _refuse_inside(f"{stream} {path!r}", real := os.path.realpath(path), folders)
    _refuse_by_identity(f"{stream} {path!r}", real, folders)
    fd = os.open(path, _WRITE_FLAGS, 0o644)
    try:
        info = os.fstat(fd)
        if path == NULL_DEVICE:
            if not _is_null_device(info):
                raise OutputRefused(f"{stream} {path!r} is not the null device on this node")
            opened = None
        else:
            if not stat.S_ISREG(info.st_mode):
                raise OutputRefused(f"{stream} {path!r} is not a regular file")
            try:
                where = _where(fd)
            except OSError as err:
                raise OutputRefused(f"{stream} {path!r}: where it leads cannot be checked ({err})") from err
            if system_tree(where) is not None:
                raise OutputRefused(f"{stream} {path!r} leads to {where!r}, under /proc, /sys or /dev")
            _refuse_inside(f"{stream} {path!r}", where, folders)  # a symbolic link changed since the check above
            _refuse_by_identity(f"{stream} {path!r}", where, folders)
            if info.st_nlink > 1:  # another name of the file may be anywhere, a protected folder too
                raise OutputRefused(f"{stream} {path!r} has other names (hard links): it is not emptied for a job")
            os.ftruncate(fd, 0)
            opened = OpenedFile(path, info.st_dev, info.st_ino)
        # Opened without blocking for the checks; the job's own writes must block as usual.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, opened


def make_working_directory(path: str, folders: Protected) -> None:
    """Make a job's working folder (and its parents), or raise ``OutputRefused``: not inside a
    protected folder, where the folders it would make could pass for an entry of the executor's
    outbox or for a later job's records (it makes them, not the job)."""
    what = f"working_directory {path!r}"
    _refuse_inside(what, real := os.path.realpath(path), folders)
    _refuse_by_identity(what, real, folders)
    Path(path).mkdir(parents=True, exist_ok=True)
    _refuse_inside(what, where := os.path.realpath(path), folders)  # a symbolic link changed since the check above
    _refuse_by_identity(what, where, folders)


def open_outputs(files: JobFiles, folders: Protected | None = None) -> JobOutputs:
    """Open (create, truncate) a job's stdout and stderr for its process, or raise why not (an
    ``OutputRefused`` or the OSError of the open: ELOOP for a symbolic link, ENXIO for a FIFO).
    ``folders``: resolved; nothing in them is opened for a job."""
    folders = folders or {}
    out, stdout = _open_one("standard_output", files.stdout, folders)
    if files.stderr == files.stdout:
        return JobOutputs(out, out, Recorded(stdout, stdout))
    try:
        err, stderr = _open_one("standard_error", files.stderr, folders)
    except BaseException:
        os.close(out)
        raise
    return JobOutputs(out, err, Recorded(stdout, stderr))


def _as_json(opened: OpenedFile | None) -> dict[str, object] | None:
    return None if opened is None else {"path": opened.path, "dev": opened.dev, "ino": opened.ino}


def record_files(folder: Path, record: Recorded) -> None:
    """Written only once the files are open: a job whose start failed before has no output. Not
    written when both streams go to /dev/null: there is nothing to keep, and a file is one create
    less per job (``outbox.py`` says what a create costs)."""
    if record.stdout is None and record.stderr is None:
        return
    (folder / RECORD).write_text(json.dumps({"stdout": _as_json(record.stdout), "stderr": _as_json(record.stderr)}))


def _from_json(data: object) -> OpenedFile | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise TypeError("not a file record")
    path, dev, ino = data["path"], data["dev"], data["ino"]
    if not isinstance(path, str) or type(dev) is not int or type(ino) is not int:
        raise TypeError("not a file record")
    return OpenedFile(path, dev, ino)


def recorded_files(folder: Path) -> Recorded | None:
    """The files a job started with, or None if it never got that far (or the record is damaged, or
    of an older executor that did not record inodes: nothing can prove those files are the job's)."""
    try:
        data = json.loads((folder / RECORD).read_text())
        return Recorded(_from_json(data["stdout"]), _from_json(data["stderr"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        why = {"folder": str(folder), "error": str(err)}
        log.warning("output not kept: the record of the job's files is unusable", extra=why)
        return None


class NotTheJobsFile(Exception):
    """The recorded path no longer leads to the file the executor opened for the job."""


def read_tail(opened: OpenedFile, max_bytes: int) -> bytes | None:
    """The last ``max_bytes`` of the job's file (a log's end is what people look for); None when it
    is gone or unreadable. Raises ``NotTheJobsFile`` when something else is at its path now."""
    try:
        fd = os.open(opened.path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as err:  # ELOOP: a symbolic link was put in its place
        raise NotTheJobsFile(str(err)) from err
    except ValueError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (opened.dev, opened.ino):
            raise NotTheJobsFile("another file is at its path now")
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
        with contextlib.suppress(OSError):
            os.close(fd)


async def upload(store: ObjectStore, job_id: int, record: Recorded, max_bytes: int) -> None:
    """Best effort for the files (missing, empty, /dev/null or not the job's: nothing stored); NATS
    being away raises, so the caller tries again later. Any other refusal is logged: the outcome
    matters more than its output."""
    streams = {"stdout": record.stdout}
    if record.stderr != record.stdout:
        streams["stderr"] = record.stderr
    for stream, opened in streams.items():
        if opened is None:
            continue
        try:
            data = await asyncio.to_thread(read_tail, opened, max_bytes)
        except NotTheJobsFile as err:
            log.warning(
                "output not kept: its path no longer leads to the job's file",
                extra={"job_id": job_id, "stream": stream, "path": opened.path, "error": str(err)},
            )
            continue
        if not data:
            continue
        try:
            await store.put(subjects.output_object(job_id, stream), data)
        except Exception as err:
            if transient(err):
                raise
            log.warning("could not upload output", extra={"job_id": job_id, "stream": stream, "error": str(err)})
