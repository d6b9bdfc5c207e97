"""``conductor up`` keeps its own servers: a SIGKILLed nats-server or PostgreSQL is started again on
the same port with the same data, the services find it again by themselves, and the next job runs
with nobody doing anything. Ctrl-C afterwards still stops everything cleanly.

One ``conductor up`` for the whole module (each costs 10-15 s), with ``--sync always`` so that the
flag is seen to reach the nats-server and to survive its restart; the tests run in file order and
the last one stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from conductor_platform.localservers import free_port, start_nats
from tests.system import System, wait_for

pytestmark = pytest.mark.e2e


@dataclass
class Up:
    system: System
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


@contextmanager
def conductor_up_logged(root: Path) -> Iterator[Up]:
    """tests.system.conductor_up on the embedded servers, with the supervisor's stderr in a file to
    read (what it says about the servers, and whether anything printed a traceback)."""
    var, work = root / "var", root / "work"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    argv = [sys.executable, "-m", "conductor", "up", "--var-dir", str(var), "--port", str(port)]
    argv += ["--node", "servers", "--cpus", "2", "--memory", "1G", "--sync", "always"]
    stderr = root / "conductor-up.stderr"
    with open(stderr, "wb") as err:
        process = subprocess.Popen(argv, env=env | {"CONDUCTOR_KILL_GRACE_S": "2"}, stderr=err)
    up = Up(System(process, f"http://127.0.0.1:{port}", var, work), stderr)
    try:
        wait_for(up.system.has_node, 120, "the system up with its node registered")
        assert process.poll() is None, "conductor up exited"
        yield up
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(90)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    with conductor_up_logged(tmp_path_factory.mktemp("up-servers")) as up:
        yield up


def _server(up: Up, binary: str) -> psutil.Process:
    """The supervisor's child running ``binary`` (the postmaster: its backends are its children)."""
    [server] = [p for p in psutil.Process(up.system.process.pid).children() if _runs(p, binary)]
    return server


def _runs(process: psutil.Process, binary: str) -> bool:
    try:
        argv = process.cmdline()
    except psutil.Error:  # gone, or a zombie not reaped yet
        return False
    return bool(argv) and Path(argv[0]).name == binary


def _flag(process: psutil.Process, flag: str) -> str:
    argv = process.cmdline()
    return str(argv[argv.index(flag) + 1])


def _kill(process: psutil.Process) -> None:
    process.kill()
    wait_for(lambda: not process.is_running() or process.status() == psutil.STATUS_ZOMBIE, what="server dead")


def _submit_when_accepted(system: System, name: str, script: str) -> int:
    """Submit, again and again while the gateway answers 503 (the log is away)."""

    def accepted() -> int | None:
        try:
            answer = system.http.post("/jobs/submit", json={"job": system.spec(name=name), "script": script})
        except httpx.HTTPError:
            return None
        if answer.status_code == 503:
            return None
        assert answer.status_code == 200, answer.text
        return int(answer.json()["job_id"])

    return wait_for(accepted, 90, "a submit accepted")


def _in_read_models(system: System, name: str, state: str) -> dict[str, Any] | None:
    """The job as the read models list it (GET /jobs reads only PostgreSQL)."""
    try:
        answer = system.http.get("/jobs", params={"name": name})
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    jobs = [job for job in answer.json()["jobs"] if job["state"] == state]
    return dict(jobs[0]) if jobs else None


def _jetstream_config(monitor_port: int) -> dict[str, Any]:
    varz = httpx.get(f"http://127.0.0.1:{monitor_port}/varz").json()
    return dict(varz["jetstream"]["config"])


def test_sync_interval_reaches_the_embedded_nats_server(tmp_path: Path) -> None:
    monitor = free_port()
    server = start_nats(tmp_path, sync_interval="always", extra_args=("-m", str(monitor)))
    try:
        assert _jetstream_config(monitor)["sync_always"] is True
    finally:
        server.stop()
    server = start_nats(tmp_path, sync_interval="10s", extra_args=("-m", str(monitor)))
    try:
        config = _jetstream_config(monitor)
        assert config["sync_interval"] == 10 * 10**9 and not config.get("sync_always")
    finally:
        server.stop()
    server = start_nats(tmp_path, extra_args=("-m", str(monitor)))
    try:
        config = _jetstream_config(monitor)
        assert config["sync_interval"] == 120 * 10**9 and not config.get("sync_always")  # the server's default
        assert not (tmp_path / "nats.conf").exists()
    finally:
        server.stop()


def test_a_killed_nats_server_is_restarted_where_it_was_and_the_next_job_runs(up: Up) -> None:
    before = _submit_when_accepted(up.system, "before-nats-kill", "true")
    assert up.system.wait_state(str(before), "COMPLETED")["state"] == "COMPLETED"
    nats = _server(up, "nats-server")
    port, store = _flag(nats, "-p"), _flag(nats, "-sd")

    _kill(nats)
    after = _submit_when_accepted(up.system, "after-nats-kill", "echo after")

    assert up.system.wait_state(str(after), "COMPLETED", "FAILED", timeout=90)["state"] == "COMPLETED"
    assert after > before  # job ids are stream sequences: the log went on, it did not start again
    again = _server(up, "nats-server")
    assert again.pid != nats.pid and (_flag(again, "-p"), _flag(again, "-sd")) == (port, store)
    conf = Path(_flag(again, "-c")).read_text()  # the same --sync as before
    assert "sync_interval" in conf and json.dumps("always") in conf
    log = up.log()
    assert f"nats-server (pid {nats.pid}) exited with signal SIGKILL" in log
    assert f"nats-server is back at nats://127.0.0.1:{port}" in log
    assert "fsync: always" in log


def test_a_killed_postgres_is_restarted_and_the_read_models_catch_up(up: Up) -> None:
    postmaster = _server(up, "postgres")
    port, data = _flag(postmaster, "-p"), _flag(postmaster, "-D")

    _kill(postmaster)
    job_id = _submit_when_accepted(up.system, "after-pg-kill", "echo after")

    job = wait_for(lambda: _in_read_models(up.system, "after-pg-kill", "COMPLETED"), 90, "COMPLETED in the read models")
    assert int(job["job_id"]) == job_id
    again = _server(up, "postgres")
    assert again.pid != postmaster.pid and (_flag(again, "-p"), _flag(again, "-D")) == (port, data)
    assert f"postgres (pid {postmaster.pid}) exited with signal SIGKILL" in up.log()


def test_ctrl_c_after_the_restarts_leaves_nothing_and_no_traceback(up: Up) -> None:
    supervisor = psutil.Process(up.system.process.pid)
    family = [supervisor.pid] + [p.pid for p in supervisor.children(recursive=True)]
    var = str(up.system.var)
    servers = [p.pid for p in psutil.process_iter(["cmdline"]) if var in " ".join(p.info["cmdline"] or [])]

    up.system.process.send_signal(signal.SIGINT)

    assert up.system.process.wait(90) == 0
    leftovers = [pid for pid in family + servers if psutil.pid_exists(pid) and not _zombie(pid)]
    assert leftovers == []
    log = up.log()
    assert "Traceback" not in log, log[-5000:]
    assert "stopped" in log


def _zombie(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True
