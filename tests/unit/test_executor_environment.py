from pathlib import Path

from conductor_contracts import events as ev
from conductor_executor.environment import exit_code_of, host_cpus, job_environment, job_files
from tests.unit.scheduling import submitted


def test_slurm_variables_and_conductor_twins() -> None:
    job = submitted(cpus=2).model_copy(update={"name": "train", "environment": {"MY_VAR": "1"}})
    placement = ev.JobPlaced(job_id=42, node="n1", cores=(2, 3), memory_mb=100)
    env = job_environment({"PATH": "/bin", "CONDUCTOR_NATS_URL": "secret", "NATS_URL": "x"}, 42, job, placement)
    assert env["SLURM_JOB_ID"] == env["CONDUCTOR_JOB_ID"] == "42"
    assert env["SLURM_JOB_NAME"] == "train"
    assert env["SLURM_CPUS_PER_TASK"] == "2"
    assert env["SLURM_SUBMIT_DIR"] == "/tmp"
    assert env["SLURM_JOB_NODELIST"] == "n1"
    assert env["MY_VAR"] == "1" and env["PATH"] == "/bin"
    assert "CONDUCTOR_NATS_URL" not in env and "NATS_URL" not in env
    assert env["SLURM_RESTART_COUNT"] == "0"
    rerun = job_environment({}, 42, job, placement.model_copy(update={"run": 2}))
    assert rerun["SLURM_RESTART_COUNT"] == rerun["CONDUCTOR_RESTART_COUNT"] == "2"


def test_files_default_to_slurm_pattern_and_stderr_joins_stdout() -> None:
    files = job_files(7, submitted())
    assert files.stdout == files.stderr == "/tmp/slurm-7.out"
    job = submitted().model_copy(update={"standard_output": "o-%j.txt", "standard_error": "/logs/%x.err"})
    assert job_files(7, job) == type(files)("/tmp/o-7.txt", "/logs/j.err")


def test_cores_map_onto_the_machine_and_wrap() -> None:
    assert host_cpus([0, 1], [4, 5, 6]) == {4, 5}
    assert host_cpus([2, 3], [0, 1]) == {0, 1}
    assert host_cpus([0], []) == set()


def test_signal_exit_codes_follow_the_shell() -> None:
    assert exit_code_of(3) == 3
    assert exit_code_of(-15) == 143


def test_node_names_become_subject_tokens() -> None:
    import pytest
    from pydantic import ValidationError

    from conductor_executor.settings import ExecutorSettings

    assert ExecutorSettings(node="ip-10-0-0-1.ec2.internal").node == "ip-10-0-0-1-ec2-internal"
    with pytest.raises(ValidationError, match="invalid node name"):
        ExecutorSettings(node="bad name*")
    with pytest.raises(ValidationError, match="invalid memory"):
        ExecutorSettings(memory="lots")


def test_leftovers_are_killed_only_if_still_the_same_process(tmp_path: Path) -> None:
    import json
    import subprocess
    import time

    from conductor_executor.leftovers import kill_leftovers, start_time

    victim = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        record = tmp_path / "process.json"
        record.write_text(json.dumps({"pid": victim.pid, "started": (start_time(victim.pid) or 0) + 1000}))
        kill_leftovers(record)  # recorded start time differs: a different process now, left alone
        time.sleep(0.1)
        assert victim.poll() is None
        record.write_text(json.dumps({"pid": victim.pid, "started": start_time(victim.pid)}))
        kill_leftovers(record)
        assert victim.wait(5) == -9
    finally:
        victim.kill()
