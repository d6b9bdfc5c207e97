"""The whole system as a user runs it: ``conductor up`` (what ``make up`` runs) on its embedded
default, driven over HTTP, then stopped with Ctrl-C (SIGINT) leaving nothing behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.system import System, conductor_up, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with conductor_up(tmp_path_factory.mktemp("system"), node="e2e") as system:
        yield system


def test_submit_runs_to_completed_with_output_in_the_file(system: System) -> None:
    job_id = system.submit('#!/bin/bash\necho "hello from $SLURM_JOB_ID"\necho warn >&2\n')
    job = system.wait_state(job_id, "COMPLETED", "FAILED")
    assert job["state"] == "COMPLETED" and job["exit_code"] == 0 and job["node"] == "e2e"
    assert job["start_time"] and job["end_time"]
    assert (system.work / f"out-{job_id}.txt").read_text() == f"hello from {job_id}\n"
    assert (system.work / f"err-{job_id}.txt").read_text() == "warn\n"


def test_nonzero_exit_is_failed_with_its_code(system: System) -> None:
    job = system.wait_state(system.submit("exit 7"), "COMPLETED", "FAILED")
    assert (job["state"], job["exit_code"]) == ("FAILED", 7)


def test_time_limit_ends_in_timeout(system: System) -> None:
    job = system.wait_state(system.submit("sleep 120", time_limit="0:02"), "TIMEOUT", "COMPLETED", "FAILED")
    assert job["state"] == "TIMEOUT"


def test_cancel_of_a_running_job(system: System) -> None:
    job_id = system.submit("sleep 120")
    system.wait_state(job_id, "RUNNING")
    wait_for(lambda: system.job(job_id)["start_time"], what="job started")
    answer = system.http.post(f"/jobs/cancel/{job_id}")
    assert answer.status_code == 200
    assert system.wait_state(job_id, "CANCELLED", "COMPLETED")["state"] == "CANCELLED"
    assert system.http.post(f"/jobs/cancel/{job_id}").status_code == 409


def test_the_seed_example_waits_with_a_reason_on_a_small_node(system: System) -> None:
    job_id = system.submit("echo too big", cpus_per_task=4, memory_per_node="8G", time_limit="60")
    job = wait_for(lambda: system.job(job_id) if system.job(job_id)["reason"] != "None" else None, what="a reason")
    assert job["state"] == "PENDING" and job["reason"] == "ResourcesNeverSatisfiable"
    assert "asks 4 CPUs" in job["reason_detail"]
    assert system.http.post(f"/jobs/cancel/{job_id}").status_code == 200
    assert system.wait_state(job_id, "CANCELLED")["state"] == "CANCELLED"


def test_unknown_job_and_bad_payloads(system: System) -> None:
    assert system.http.get("/jobs/query/987654").status_code == 404
    bad = system.http.post("/jobs/submit", json={"job": {"name": "x"}, "script": ""})
    assert bad.status_code == 422 and "detail" in bad.json()


def test_a_killed_service_is_restarted_and_nothing_is_lost(system: System) -> None:
    _child(system, "conductor_projector").kill()
    job_id = system.submit("echo after-kill")
    assert system.wait_state(job_id, "COMPLETED")["state"] == "COMPLETED"


def _job_pid(system: System, job_id: str) -> int:
    return int(json.loads((system.var / "executor" / "e2e" / "jobs" / job_id / "process.json").read_text())["pid"])


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _child(system: System, module: str) -> psutil.Process:
    [child] = [p for p in psutil.Process(system.process.pid).children() if module in _command(p)]
    return child


def _command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # a child that ended and is not reaped yet (a zombie) has none
        return ""


def test_a_killed_gateway_comes_back(system: System) -> None:
    _child(system, "conductor_gateway").kill()

    def healthy() -> bool:
        try:
            return system.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, what="gateway restarted")
    job_id = system.submit("echo via-new-gateway")
    assert system.wait_state(job_id, "COMPLETED")["state"] == "COMPLETED"


def test_a_killed_scheduler_is_replaced_and_placing_resumes(system: System) -> None:
    _child(system, "conductor_scheduler").kill()
    job_id = system.submit("echo placed-after-restart")
    # conductor up gives its scheduler a stable id: the restarted one takes its lease back at once.
    assert system.wait_state(job_id, "COMPLETED", timeout=90)["state"] == "COMPLETED"


def test_a_job_outlives_its_killed_executor_and_ends_with_its_own_exit(system: System) -> None:
    gate = system.work / "let-it-end"
    job_id = system.submit(f"until [ -e {gate} ]; do sleep 0.1; done; exit 5")
    wait_for(lambda: system.job(job_id)["start_time"], what="job started")
    supervisor = _job_pid(system, job_id)
    executor = _child(system, "conductor_executor")
    executor.kill()
    executor.wait(10)
    assert not _gone(supervisor), "the job died with its executor"
    # conductor up starts a new executor, which takes the job over.
    wait_for(lambda: _restarted(system, executor), what="executor restarted")
    gate.touch()
    job = system.wait_state(job_id, "NODE_FAIL", "COMPLETED", "FAILED", "CANCELLED")
    assert (job["state"], job["exit_code"]) == ("FAILED", 5)
    after = system.submit("echo node-back")
    assert system.wait_state(after, "COMPLETED")["state"] == "COMPLETED"


def test_a_requeue_job_stopped_with_its_executor_runs_again(system: System) -> None:
    """``conductor up`` stops its jobs with an executor it stops (SIGTERM) and starts it again: its
    jobs are NODE_FAIL and requeue jobs run again, as Slurm's on a node going down. They were
    FAILED 143 without a word, the requeue job lost (review of 2026-12-02)."""
    runs = system.work / "requeued-runs"
    job_id = system.submit(f"echo run >> {runs}; [ $(wc -l < {runs}) -ge 2 ] || sleep 300", requeue=True)
    wait_for(lambda: system.job(job_id)["start_time"], what="job started")
    executor = _child(system, "conductor_executor")
    executor.terminate()
    executor.wait(60)
    wait_for(lambda: _restarted(system, executor), what="executor restarted")
    job = system.wait_state(job_id, "COMPLETED", "FAILED", "NODE_FAIL", "CANCELLED", timeout=90)
    assert job["state"] == "COMPLETED" and job["restarts"] == 1, job
    assert runs.read_text() == "run\nrun\n"


def _restarted(system: System, old: psutil.Process) -> bool:
    try:
        return bool(_child(system, "conductor_executor").pid != old.pid)
    except ValueError:  # none between the two
        return False


def test_output_is_served_over_http(system: System) -> None:
    job_id = system.submit('echo "out line"\necho "err line" >&2\n')
    system.wait_state(job_id, "COMPLETED")
    assert system.http.get(f"/jobs/{job_id}/output").text == "out line\n"
    assert system.http.get(f"/jobs/{job_id}/output", params={"stream": "stderr"}).text == "err line\n"
    assert system.http.get(f"/jobs/{job_id}/output", params={"stream": "both"}).status_code == 422
    assert system.http.get("/jobs/987654/output").status_code == 404
    # Both streams named the same file: one file, kept as stdout (stderr was an empty 200).
    joined = system.submit('echo "out"\necho "err" >&2\n', standard_output="j-%j.txt", standard_error="j-%j.txt")
    system.wait_state(joined, "COMPLETED")
    assert system.http.get(f"/jobs/{joined}/output").text == "out\nerr\n"
    stderr = system.http.get(f"/jobs/{joined}/output", params={"stream": "stderr"})
    assert stderr.status_code == 404 and "joined to stdout" in stderr.text


def test_a_second_conductor_up_on_the_same_port_says_so(system: System, tmp_path: Path) -> None:
    port = system.url.rsplit(":", 1)[1]
    second = subprocess.run(
        [sys.executable, "-m", "conductor", "up", "--var-dir", str(tmp_path), "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert f"port {port} is in use" in second.stderr
    assert not (tmp_path / "nats").exists()  # refused before starting anything


def test_ctrl_c_stops_everything(system: System) -> None:
    running = system.submit("sleep 300")
    wait_for(lambda: system.job(running)["start_time"], what="job started")
    family = [system.process.pid] + [p.pid for p in psutil.Process(system.process.pid).children(recursive=True)]
    servers = [p.pid for p in psutil.process_iter(["cmdline"]) if str(system.var) in " ".join(p.info["cmdline"] or [])]
    job_pid = _job_pid(system, running)
    system.process.send_signal(signal.SIGINT)
    assert system.process.wait(90) == 0
    leftovers = [pid for pid in family + servers if not _gone(pid)]
    assert leftovers == []
    assert _gone(job_pid), "a job outlived conductor up"
