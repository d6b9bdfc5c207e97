"""localservers as the supervisor uses it: a server that does not become ready is not left running,
and the error carries the server's own explanation."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conductor_platform.localservers import _last_words, _ready_or_killed


def _fail() -> None:
    raise RuntimeError("postgres exited with code 1 while starting")


def test_a_server_that_does_not_become_ready_is_killed_and_its_log_says_why(tmp_path: Path) -> None:
    log = tmp_path / "postgres.log"
    log.write_text("2026 LOG:  an older run\n2026 FATAL:  an older run's end\n")
    since = log.stat().st_size
    with open(log, "a") as f:
        f.write("FATAL:  pre-existing shared memory block (key 1, ID 2) is still in use\nHINT:  Terminate any old\n")
    proc = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(RuntimeError) as error:
            _ready_or_killed(proc, log, since, _fail)
        assert proc.poll() is not None
        assert str(error.value) == (
            "postgres exited with code 1 while starting: "
            "FATAL:  pre-existing shared memory block (key 1, ID 2) is still in use"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_last_words_reads_only_this_start(tmp_path: Path) -> None:
    log = tmp_path / "nats.log"
    log.write_text("[ERR] an older run\n")
    since = log.stat().st_size
    assert _last_words(log, since) == ""
    with open(log, "a") as f:
        f.write("[INF] Starting nats-server\n[INF] Listening for client connections\n")
    assert _last_words(log, since) == "[INF] Listening for client connections"
    with open(log, "a") as f:
        f.write('[FTL] Error listening on port: 127.0.0.1:4222, "address already in use"\n[INF] bye\n')
    assert _last_words(log, since).startswith("[FTL] Error listening on port")
    assert _last_words(tmp_path / "missing.log", 0) == ""
