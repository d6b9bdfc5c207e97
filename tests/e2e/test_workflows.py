"""Users, workflows and dependencies as a user runs them: ``conductor up``, over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.system import System, conductor_up, wait_for

pytestmark = pytest.mark.e2e

ENDED = ("COMPLETED", "FAILED", "CANCELLED")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with conductor_up(tmp_path_factory.mktemp("workflows"), node="wf") as system:
        yield system


@pytest.fixture(scope="module")
def user(system: System) -> str:
    # The seed's own request, as its README has it.
    answer = system.http.post("/users/", json={"username": "test_user"})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


def _submit(system: System, user: str, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    answer = system.http.post("/workflows/", json={"user_id": user, "jobs": jobs})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _ended(system: System, workflow_id: str, timeout: float = 60) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        view = dict(system.http.get(f"/workflows/{workflow_id}").json())
        return view if view["state"] in ENDED else None

    return wait_for(probe, timeout, f"workflow {workflow_id} ended")


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_the_seed_workflow_runs_to_completed_as_it_stands(system: System, user: str) -> None:
    created = _submit(
        system,
        user,
        [
            {"name": "Job1: 切片任务", "job_type": "tiling", "branch_id": "main", "parent_indices": []},
            {"name": "Job2: 推理任务", "job_type": "inference", "branch_id": "main", "parent_indices": [0]},
            {"name": "Job3: 后处理任务", "job_type": "postprocessing", "branch_id": "main", "parent_indices": [1]},
        ],
    )
    assert created["job_count"] == 3
    view = _ended(system, created["workflow_id"])
    assert view["state"] == "COMPLETED" and view["owner"] == "test_user"
    assert [j["state"] for j in view["jobs"]] == ["COMPLETED"] * 3
    ends = [_time(j["end_time"]) for j in view["jobs"]]
    assert ends == sorted(ends)
    listed = system.http.get("/workflows", params={"user_id": user}).json()["workflows"]
    assert created["workflow_id"] in [w["workflow_id"] for w in listed]


def test_a_diamond_runs_its_branches_together_and_joins_after_both(system: System, user: str) -> None:
    work = str(system.work)
    step = {"current_working_directory": work, "memory_per_node": "100M"}
    created = _submit(
        system,
        user,
        [
            {"name": "A", "script": "sleep 0.2", **step},
            {"name": "B", "branch_id": "left", "script": "sleep 2", "parent_indices": [0], **step},
            {"name": "C", "branch_id": "right", "script": "sleep 2", "parent_indices": [0], **step},
            {"name": "D", "script": "echo joined", "parent_indices": [1, 2], **step},
        ],
    )
    view = _ended(system, created["workflow_id"])
    assert view["state"] == "COMPLETED", view
    a, b, c, d = view["jobs"]
    assert _time(b["start_time"]) >= _time(a["end_time"]) and _time(c["start_time"]) >= _time(a["end_time"])
    # B and C overlap in time: independent branches run at once.
    assert _time(b["start_time"]) < _time(c["end_time"]) and _time(c["start_time"]) < _time(b["end_time"])
    assert _time(d["start_time"]) >= max(_time(b["end_time"]), _time(c["end_time"]))
    assert d["parent_indices"] == [1, 2] and d["parents"] == [b["job_id"], c["job_id"]]
    assert (system.work / f"slurm-{d['job_id']}.out").read_text() == "joined\n"


def test_a_failing_parent_cancels_every_descendant(system: System, user: str) -> None:
    step = {"current_working_directory": str(system.work), "memory_per_node": "100M"}
    created = _submit(
        system,
        user,
        [
            {"name": "fails", "script": "exit 3", **step},
            {"name": "child", "script": "touch never-child", "parent_indices": [0], **step},
            {"name": "grandchild", "parent_indices": [1]},
            {"name": "independent", "script": "true", **step},
        ],
    )
    view = _ended(system, created["workflow_id"])
    assert view["state"] == "FAILED"
    states = [(j["state"], j["reason"]) for j in view["jobs"]]
    assert states == [
        ("FAILED", None),
        ("CANCELLED", "DependencyNeverSatisfied"),
        ("CANCELLED", "DependencyNeverSatisfied"),
        ("COMPLETED", None),
    ]
    assert view["jobs"][1]["start_time"] is None and not (system.work / "never-child").exists()
    assert "ended FAILED" in (view["jobs"][1]["reason_detail"] or "")


def test_a_workflow_cancelled_midway(system: System, user: str) -> None:
    step = {"current_working_directory": str(system.work), "memory_per_node": "100M"}
    created = _submit(
        system, user, [{"name": "long", "script": "sleep 60", **step}, {"name": "after", "parent_indices": [0]}]
    )
    first = created["job_ids"][0]
    wait_for(lambda: system.job(first)["start_time"], what="the first job started")
    answer = system.http.post(f"/workflows/{created['workflow_id']}/cancel")
    assert answer.status_code == 200 and answer.json()["cancel_requested"] == created["job_ids"]
    view = _ended(system, created["workflow_id"])
    assert view["state"] == "CANCELLED"
    assert [j["state"] for j in view["jobs"]] == ["CANCELLED", "CANCELLED"]
    assert view["end_time"] is not None


def test_single_job_dependencies(system: System) -> None:
    first = system.submit("exit 0")
    system.wait_state(first, "COMPLETED")
    ok = system.submit("true", dependency=f"afterok:{first}")
    on_failure = system.submit("true", dependency=f"afternotok:{first}")
    assert system.wait_state(ok, *ENDED)["state"] == "COMPLETED"
    cancelled = system.wait_state(on_failure, *ENDED)
    assert (cancelled["state"], cancelled["reason"]) == ("CANCELLED", "DependencyNeverSatisfied")
    slow = system.submit("sleep 1")
    waits = system.submit("true", dependency=f"afterany:{slow}")
    held = system.job(waits)
    assert held["state"] == "PENDING" and held["reason"] == "Dependency"
    done = system.wait_state(waits, *ENDED)
    assert done["state"] == "COMPLETED"
    assert _time(done["start_time"]) >= _time(system.job(slow)["end_time"])
