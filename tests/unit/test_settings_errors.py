"""A setting that does not hold ends every service's start with what is wrong and which setting, not
a traceback (run as its users run it: ``python -m <service>``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conductor_platform.settings import EXIT_BAD_SETTING


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
    assert "retry_max_s" in done.stderr and "greater than 0" in done.stderr
    assert "Traceback" not in done.stderr
    if module == "conductor_projector":
        assert "kept_rows" in done.stderr


def test_a_log_level_python_does_not_know_is_a_bad_setting() -> None:
    env = os.environ | {"CONDUCTOR_LOG_LEVEL": "LOUD"}
    done = subprocess.run(
        [sys.executable, "-m", "conductor_scheduler"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT_BAD_SETTING
    assert "log_level" in done.stderr and "DEBUG, INFO, WARNING, ERROR, CRITICAL" in done.stderr
    assert "Traceback" not in done.stderr
