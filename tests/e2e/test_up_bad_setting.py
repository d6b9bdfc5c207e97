"""``conductor up`` stops when a service ends on a setting that does not hold, instead of starting it
again with back-off for as long as it runs: the same environment cannot mend it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conductor_platform.localservers import free_port

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
    assert "conductor projector: " in stderr and "kept_rows" in stderr
    assert "projector exited: a setting does not hold" in stderr
    assert "restarting in" not in stderr
    assert "Traceback" not in stderr
