"""A setting that does not hold ends every service's start with what is wrong and which setting, not
a traceback (run as its users run it: ``python -m <service>``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from conductor_executor.settings import ExecutorSettings
from conductor_gateway.settings import GatewaySettings
from conductor_platform.settings import EXIT_BAD_SETTING
from conductor_projector.settings import ProjectorSettings
from conductor_scheduler.settings import SchedulerSettings


@pytest.mark.parametrize(
    ("module", "program"),
    [
        ("conductor_projector", "conductor projector"),
        ("conductor_scheduler", "conductor scheduler"),
        ("conductor_gateway", "conductor gateway"),
        ("conductor_executor", "conductor executor"),
    ],
)
def test_a_bad_setting_is_told_by_name_without_a_traceback(module: str, program: str) -> None:
    env = os.environ | {"CONDUCTOR_RETRY_MAX_S": "-3", "CONDUCTOR_KEPT_ROWS": "many"}
    done = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_BAD_SETTING
    assert done.stderr.startswith(f"{program}: ")
    assert "CONDUCTOR_RETRY_MAX_S: Input should be greater than 0" in done.stderr
    assert "Traceback" not in done.stderr
    if module == "conductor_projector":
        assert "CONDUCTOR_KEPT_ROWS" in done.stderr


def test_a_log_level_python_does_not_know_is_a_bad_setting() -> None:
    env = os.environ | {"CONDUCTOR_LOG_LEVEL": "LOUD"}
    done = subprocess.run(
        [sys.executable, "-m", "conductor_scheduler"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT_BAD_SETTING
    assert "CONDUCTOR_LOG_LEVEL" in done.stderr and "DEBUG, INFO, WARNING, ERROR, CRITICAL" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("settings", "variable", "value"),
    [
        (SchedulerSettings, "CONDUCTOR_LEASE_TTL_S", "-1"),
        (SchedulerSettings, "CONDUCTOR_QUEUE_DEPTH", "0"),
        (SchedulerSettings, "CONDUCTOR_SNAPSHOT_EVERY_EVENTS", "0"),
        (ProjectorSettings, "CONDUCTOR_BATCH_SIZE", "0"),
        (ProjectorSettings, "CONDUCTOR_LINGER_S", "-0.5"),
        (ProjectorSettings, "CONDUCTOR_PUBLIC_RETENTION_S", "0"),
        (GatewaySettings, "CONDUCTOR_PAGE_SIZE", "0"),
        (GatewaySettings, "CONDUCTOR_PAGE_SIZE", "501"),
        (GatewaySettings, "CONDUCTOR_PORT", "70000"),
        (GatewaySettings, "CONDUCTOR_MAX_OUTPUT_BYTES", "-1"),
        (ExecutorSettings, "CONDUCTOR_KILL_GRACE_S", "-1"),
        # Infinity crashed the executor's fence arithmetic; 1e12 s was a NATS max_age no int64 holds.
        (ExecutorSettings, "CONDUCTOR_HEARTBEAT_S", "inf"),
        (ExecutorSettings, "CONDUCTOR_NODE_LOST_AFTER_S", "nan"),
        (ProjectorSettings, "CONDUCTOR_PUBLIC_RETENTION_S", "1e12"),
        (SchedulerSettings, "CONDUCTOR_LEASE_TTL_S", "1e400"),
        (SchedulerSettings, "CONDUCTOR_LEASE_TTL_S", "0.05"),
        (ExecutorSettings, "CONDUCTOR_HEARTBEAT_S", "0.001"),
        (ExecutorSettings, "CONDUCTOR_KILL_GRACE_S", "1e300"),
        (ExecutorSettings, "CONDUCTOR_MEMORY_POLL_S", "1e300"),  # NATS: 100 ms at least; 1e-12 never expired
        (GatewaySettings, "CONDUCTOR_EVENTS_HEARTBEAT_S", "1e-6"),
        (ExecutorSettings, "CONDUCTOR_PARTITIONS", '[""]'),
        (ExecutorSettings, "CONDUCTOR_PARTITIONS", "[]"),
        (ExecutorSettings, "CONDUCTOR_PARTITIONS", '["x/y"]'),
    ],
)
def test_a_number_out_of_its_range_is_a_bad_setting(
    settings: type[BaseSettings], variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each used to pass, and the service ran on with a lease that expired at once, batches of nothing...
    # (that a bad setting ends each service with its name and no traceback is the first test's).
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("CONDUCTOR_").lower()):
        settings()


def test_a_bad_setting_is_one_line_that_quotes_no_other_setting() -> None:
    # An error of the whole (heartbeats against the silence) quoted every setting given, DATABASE_URL's
    # password included, in four lines naming fields rather than variables.
    env = os.environ | {"CONDUCTOR_HEARTBEAT_S": "45", "DATABASE_URL": "postgresql://u:s3cret@db/c"}
    done = subprocess.run(
        [sys.executable, "-m", "conductor_executor"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT_BAD_SETTING
    assert len(done.stderr.strip().splitlines()) == 1 and "s3cret" not in done.stderr
    assert "CONDUCTOR_NODE_LOST_AFTER_S (30) must be at least 1.5 times CONDUCTOR_HEARTBEAT_S" in done.stderr


def test_heartbeats_further_apart_than_a_node_may_be_silent_are_a_bad_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # 45 s beats against the 30 s silence: the node was declared lost between beats, its jobs NODE_FAIL.
    monkeypatch.setenv("CONDUCTOR_HEARTBEAT_S", "45")
    with pytest.raises(ValidationError, match="would be declared lost between two beats"):
        ExecutorSettings()


@pytest.mark.parametrize(
    ("variable", "value"), [("CONDUCTOR_PARTITIONS", "default"), ("NATS_URL", ","), ("NATS_URL", " ")]
)
def test_a_list_setting_that_is_not_json_or_no_server_is_a_bad_setting(variable: str, value: str) -> None:
    # A list not in JSON was a traceback and exit 1: conductor up restarted the executor for ever. No
    # server at all left nats-py spinning a core in its connect, deaf to SIGTERM.
    env = os.environ | {variable: value}
    done = subprocess.run(
        [sys.executable, "-m", "conductor_executor"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT_BAD_SETTING
    assert done.stderr.startswith("conductor executor: ") and "Traceback" not in done.stderr


@pytest.mark.parametrize("state", ["/proc/nope", "a file", "a file/below"])
def test_a_state_folder_the_executor_cannot_write_stops_its_start(state: str, tmp_path: Path) -> None:
    # Before, it ran on, retrying to write its registration for ever: a node that never came.
    (tmp_path / "a file").write_text("")
    env = os.environ | {"CONDUCTOR_STATE_DIR": state, "NATS_URL": "nats://127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, "-m", "conductor_executor"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT_BAD_SETTING
    assert done.stderr.startswith(f"conductor executor: CONDUCTOR_STATE_DIR {state}: ")
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
