"""The supervisor's pure parts: back-off, --sync, and what it does with a server that dies or will
not start (real short-lived processes stand in for the servers)."""

from __future__ import annotations

import argparse
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conductor import cli
from conductor.cli import main
from conductor.supervisor import (
    Backoff,
    ManagedServer,
    Supervisor,
    UpOptions,
    _backoff,
    _port_free,
    describe_exit,
    nats_sync_interval,
)
from conductor_platform.localservers import LocalServer, free_port


def test_backoff_doubles_while_it_keeps_dying_quickly_up_to_the_cap() -> None:
    backoff = Backoff(first_s=0.5, max_s=30, stable_s=10)
    assert [backoff.delay_after(1.0) for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_backoff_starts_over_after_a_long_enough_run() -> None:
    backoff = Backoff(first_s=0.5, max_s=30, stable_s=10)
    for _ in range(5):
        backoff.delay_after(0.0)
    assert backoff.delay_after(10.0) == 0.5
    assert backoff.delay_after(0.1) == 1.0


def test_backoff_never_overflows() -> None:
    backoff = Backoff(failures=5000)
    assert backoff.delay_after(0.0) == backoff.max_s


@pytest.mark.parametrize(("value", "expected"), [("always", "always"), ("default", None), ("10s", "10s")])
def test_sync_values(value: str, expected: str | None) -> None:
    assert nats_sync_interval(value) == expected


@pytest.mark.parametrize("value", ["1m30s", "500ms", "1.5h", "2m0s"])
def test_sync_takes_go_durations(value: str) -> None:
    assert nats_sync_interval(value) == value


@pytest.mark.parametrize("value", ["", "10", "ten", "10 s", "-5s", "0s", "0m0s", "always ", "5d", "s"])
def test_sync_refuses_what_nats_server_would_not_take_or_would_take_as_the_default(value: str) -> None:
    with pytest.raises(ValueError, match="--sync"):
        nats_sync_interval(value)


def test_a_bad_sync_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["up", "--sync", "sometimes"])
    assert exit_.value.code == 2
    assert "always, default or a duration" in capsys.readouterr().err


def test_describe_exit() -> None:
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(3) == "code 3"
    assert describe_exit(-200) == "signal 200"


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


class FakeStarts:
    """Starts a ``sleep`` in place of a server, or fails as a server that will not start does."""

    def __init__(self, sleepers: list[subprocess.Popen[bytes]]) -> None:
        self.sleepers = sleepers
        self.fail_next = 0
        self.calls = 0

    def __call__(self) -> LocalServer:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("postgres exited with code 1 while starting: FATAL: ... still in use")
        proc = subprocess.Popen(["sleep", "60"])
        self.sleepers.append(proc)
        return LocalServer("fake", "fake://127.0.0.1:1", proc)


def _kill(server: LocalServer | None) -> None:
    assert server is not None
    server.process.kill()
    server.process.wait()


def test_a_dead_server_is_started_again_after_its_delay(sleepers: list[subprocess.Popen[bytes]]) -> None:
    starts = FakeStarts(sleepers)
    managed = ManagedServer("fake", starts)
    first = managed.first_start()
    now = time.monotonic()
    managed.check(now, stopping=False)
    assert managed.server is first  # alive: nothing to do

    _kill(managed.server)
    managed.check(now + 60, stopping=False)
    assert managed.server is None and managed.next_start == now + 60 + 0.5  # it had run a while: soon

    managed.check(now + 60.4, stopping=False)
    assert managed.server is None and starts.calls == 1  # not before its time
    managed.check(now + 60.5, stopping=False)
    assert managed.server is not None and managed.server is not first and starts.calls == 2


def test_a_server_that_will_not_start_is_tried_again_later_and_later(
    sleepers: list[subprocess.Popen[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    starts = FakeStarts(sleepers)
    managed = ManagedServer("fake", starts)
    managed.first_start()
    _kill(managed.server)
    managed.check(time.monotonic() + 60, stopping=False)
    starts.fail_next = 3
    for _ in range(3):
        managed.check(managed.next_start, stopping=False)
        assert managed.server is None
    waits = [r.getMessage().rsplit(" ", 1)[1] for r in caplog.records if "did not start again" in r.getMessage()]
    assert waits == ["1.0s", "2.0s", "4.0s"]
    assert "fake did not start again (postgres exited with code 1" in caplog.text

    managed.check(managed.next_start, stopping=False)
    assert managed.server is not None and starts.calls == 5


def test_nothing_is_started_again_once_stopping(sleepers: list[subprocess.Popen[bytes]]) -> None:
    starts = FakeStarts(sleepers)
    managed = ManagedServer("fake", starts)
    managed.first_start()
    _kill(managed.server)
    now = time.monotonic()
    managed.check(now, stopping=True)  # its death is still noticed
    assert managed.server is None
    managed.check(now + 60, stopping=True)
    assert managed.server is None and starts.calls == 1
    managed.stop()  # nothing to stop: no error


def test_external_servers_are_not_managed(tmp_path: Path) -> None:
    supervisor = Supervisor(UpOptions(var_dir=tmp_path, executor_args=[]))
    env = {"NATS_URL": "nats://elsewhere:4222", "DATABASE_URL": "postgresql://elsewhere/conductor"}
    supervisor._servers(env)
    assert supervisor.servers == []
    assert not (tmp_path / "nats").exists() and not (tmp_path / "postgres").exists()


def test_sync_with_an_external_nats_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NATS_URL", "nats://elsewhere:4222")
    supervisor = Supervisor(UpOptions(var_dir=tmp_path / "var", executor_args=[], nats_sync="always"))
    assert supervisor.run() == 2
    assert "set sync_interval in that server's configuration" in caplog.text
    assert not (tmp_path / "var").exists()


def test_a_metrics_port_in_use_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("CONDUCTOR_PORT", str(free_port()))
        monkeypatch.setenv("CONDUCTOR_SCHEDULER_METRICS_PORT", str(port))
        supervisor = Supervisor(UpOptions(var_dir=tmp_path / "var", executor_args=[]))
        assert supervisor.run() == 1
    assert f"CONDUCTOR_SCHEDULER_METRICS_PORT={port} is in use" in caplog.text
    assert not (tmp_path / "var").exists()


def test_a_port_is_checked_on_the_hosts_own_family() -> None:
    # An IPv6 CONDUCTOR_HOST was checked with an IPv4 socket, and any port read as in use.
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("::1", 0))
        port = taken.getsockname()[1]
        assert not _port_free("::1", port)
    assert _port_free("::1", port)


def test_a_gateway_port_that_is_no_port_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CONDUCTOR_PORT", "8o8o")
    assert Supervisor(UpOptions(var_dir=tmp_path / "var", executor_args=[])).run() == 2
    assert "must be a port number 1-65535, not '8o8o'" in caplog.text
    assert not (tmp_path / "var").exists()


def test_an_executor_is_started_again_before_its_node_can_be_declared_lost() -> None:
    """Its restarts waited up to 30 s, the default node_lost_after_s: a review's executor stopped over
    and over had its node declared lost, and its requeue jobs used up their requeues without running."""
    for env, most in (
        ({}, 5.0),
        ({"CONDUCTOR_NODE_LOST_AFTER_S": "12"}, 2.0),
        ({"CONDUCTOR_NODE_LOST_AFTER_S": "x"}, 5.0),
    ):
        backoff = _backoff("executor", env)
        assert max(backoff.delay_after(0.0) for _ in range(20)) == most
    other = _backoff("scheduler", {})
    assert max(other.delay_after(0.0) for _ in range(20)) == 30.0


@pytest.mark.parametrize("value", ["9" * 500, "x" * 100 + "d"])
def test_a_long_duration_is_refused_without_being_echoed_whole(value: str) -> None:
    """`conductor compact --keep` with 500 digits printed all 500 back (review of 2026-12-02)."""
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        cli._duration(value)
    assert len(str(refused.value)) < 120 and f"({len(value)} characters)" in str(refused.value)
