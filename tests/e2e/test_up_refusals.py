"""What ``conductor up`` cannot run with ends it with a message, never a traceback nor a loop of restarts:
a service that ends on a setting that does not hold (the same environment cannot mend it), a gateway
port that is no port, an external PostgreSQL that refuses; and Ctrl-C while it waits on one that never
answers stops it at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conductor.supervisor import lock_var_dir
from conductor_platform.localservers import free_port, start_nats
from tests.system import connected_to

pytestmark = pytest.mark.e2e


def test_a_bad_setting_stops_conductor_up_with_the_setting_named(tmp_path: Path, database_url: str) -> None:
    # Nothing listens at this NATS_URL: a service that got past its settings could not do anything.
    env = os.environ | {
        "NATS_URL": "nats://127.0.0.1:1",
        "DATABASE_URL": database_url,
        "CONDUCTOR_KEPT_ROWS": "many",
    }
    argv = [sys.executable, "-m", "conductor", "up", "--var-dir", str(tmp_path / "var"), "--port", str(free_port())]
    up = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = up.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        up.send_signal(signal.SIGINT)  # Ctrl-C: its services go too, none is left behind
        _, stderr = up.communicate(timeout=90)
        pytest.fail(f"conductor up still ran after 90 s:\n{stderr}")
    assert up.returncode == 1, stderr
    assert "conductor projector: CONDUCTOR_KEPT_ROWS: " in stderr
    assert "projector exited: a setting does not hold" in stderr
    assert "restarting in" not in stderr
    assert "Traceback" not in stderr


def _up(tmp_path: Path, port: str, **env: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "conductor", "up", "--var-dir", str(tmp_path / "var"), "--port", port]
    return subprocess.Popen(argv, env=os.environ | env, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("port", ["abc", "70000", "\u0663"])
def test_a_gateway_port_that_is_no_port_is_refused(tmp_path: Path, port: str) -> None:
    argv = [sys.executable, "-m", "conductor", "up", "--var-dir", str(tmp_path / "var")]
    done = subprocess.run(argv, env=os.environ | {"CONDUCTOR_PORT": port}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "must be a port number" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "var").exists()


def test_a_var_folder_another_conductor_up_holds_is_refused_before_anything_starts(tmp_path: Path) -> None:
    # Two on one folder ran a second nats-server on the first one's JetStream store.
    held = lock_var_dir(tmp_path / "var")
    assert held is not None
    try:
        up = _up(tmp_path, str(free_port()))
        _, stderr = up.communicate(timeout=60)
        assert up.returncode == 2, stderr
        assert f"another conductor up (pid {os.getpid()}), or a server or service it started" in stderr
        assert not (tmp_path / "var" / "nats").exists() and "Traceback" not in stderr
    finally:
        os.close(held)


def test_a_port_in_other_digits_is_refused(tmp_path: Path) -> None:
    # int() took "\u0663" (Arabic-Indic three) for port 3.
    argv = [sys.executable, "-m", "conductor", "up", "--var-dir", str(tmp_path / "var"), "--port", "\u0663"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "digits 0-9" in done.stderr, done.stderr


def test_port_zero_is_refused_not_taken_for_the_default(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "conductor", "up", "--var-dir", str(tmp_path / "var"), "--port", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "must be a port number 1-65535, not '0'" in done.stderr


def test_a_host_the_gateway_cannot_listen_on_is_not_called_a_port_in_use(tmp_path: Path) -> None:
    up = _up(tmp_path, str(free_port()), CONDUCTOR_HOST="no-such-host.invalid")
    _, stderr = up.communicate(timeout=60)
    assert up.returncode == 2, stderr
    assert "the gateway cannot listen on CONDUCTOR_HOST='no-such-host.invalid'" in stderr
    assert "in use" not in stderr


def test_an_external_postgresql_that_refuses_is_one_line(tmp_path: Path) -> None:
    up = _up(
        tmp_path,
        str(free_port()),
        NATS_URL="nats://127.0.0.1:1",
        DATABASE_URL=f"postgresql://x@127.0.0.1:{free_port()}/x",
    )
    _, stderr = up.communicate(timeout=90)
    assert up.returncode == 1, stderr
    assert "could not bring the read models' schema up to date at DATABASE_URL" in stderr
    assert "Traceback" not in stderr


def test_a_postgresql_data_folder_initdb_cannot_make_says_why(tmp_path: Path) -> None:
    """The embedded PostgreSQL's initdb failing said only that it returned 1; its own words say why."""
    (tmp_path / "var" / "postgres").mkdir(parents=True)
    (tmp_path / "var" / "postgres" / "data").write_text("not a folder\n")
    up = _up(tmp_path, str(free_port()))
    _, stderr = up.communicate(timeout=90)
    assert up.returncode == 1, stderr
    assert "initdb could not make PostgreSQL's data folder" in stderr and "Not a directory" in stderr, stderr
    assert "Traceback" not in stderr


def test_ctrl_c_while_an_external_postgresql_never_answers_stops_at_once(tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"postgresql://x@127.0.0.1:{silent.getsockname()[1]}/x"
        up = _up(tmp_path, str(free_port()), NATS_URL="nats://127.0.0.1:1", DATABASE_URL=url)
        deadline = time.monotonic() + 60
        while not connected_to(up.pid, silent.getsockname()[1]):  # into the migration's wait for an answer
            assert up.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        up.send_signal(signal.SIGINT)
        try:
            _, stderr = up.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            up.kill()
            pytest.fail(f"conductor up still ran 10 s after Ctrl-C: {up.communicate()[1]}")
    assert up.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_the_var_folder_stays_locked_while_a_server_conductor_up_started_lives(tmp_path: Path) -> None:
    # A SIGKILL of conductor up left its nats-server running and released the lock: a second conductor
    # up ran another nats-server on the live JetStream store (jobs lost, one id given to two jobs).
    var = tmp_path / "var"
    held = lock_var_dir(var)
    assert held is not None
    server = start_nats(var / "nats", keep_fds=(held,))
    try:
        os.close(held)  # as the kernel does for a conductor up killed
        assert lock_var_dir(var) is None
    finally:
        server.stop()
    again = lock_var_dir(var)
    assert again is not None
    os.close(again)
