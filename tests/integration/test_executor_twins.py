"""A node has one executor: a second started with its name is refused (``twins.py``). Two shared the
node's placements: a placement one of them was slow to acknowledge ran on both."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_executor import twins
from conductor_executor.service import run
from conductor_platform.bus import Bus
from tests.integration.helpers import eventually
from tests.integration.test_executor import NODE, _outcome, _submit_and_place, executor_settings, running


async def _beats(bus: Bus) -> bytes | None:
    kv = await bus.heartbeats()
    try:
        return (await kv.get(subjects.heartbeat_key(NODE))).value
    except Exception:
        return None


async def test_a_second_executor_of_a_node_elsewhere_is_refused_and_the_first_runs_on(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    first = executor_settings(nats_url, tmp_path / "a", heartbeat_s=0.5)
    async with running(bus, first):
        await eventually(lambda: _beats(bus), what="the first executor's heartbeat")
        second = executor_settings(nats_url, tmp_path / "b", heartbeat_s=0.5)  # another machine's folder
        with pytest.raises(twins.TwinExecutor, match="another executor of this node is running"):
            await asyncio.wait_for(run(second, asyncio.Event()), 60)
        job_id = await _submit_and_place(bus, tmp_path / "work", "echo once >> runs\n")
        outcome = await _outcome(bus, job_id)
        assert isinstance(outcome, ev.JobCompleted)
        assert (tmp_path / "work" / "runs").read_text() == "once\n"


async def test_an_executor_restarted_on_its_own_folder_is_no_twin(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    settings = executor_settings(nats_url, tmp_path, heartbeat_s=0.5)
    async with running(bus, settings):
        beat = json.loads(await eventually(lambda: _beats(bus), what="a heartbeat"))
        # What the scheduler waits for before it declares the node lost, at least (its liveness.py).
        assert beat["lost_after_s"] == settings.node_lost_after_s and beat["instance"]
    # Its last beat is its own instance's: the restart starts (a twin's check would refuse it).
    async with running(bus, settings):
        job_id = await _submit_and_place(bus, tmp_path / "work", "true\n")
        assert isinstance(await _outcome(bus, job_id), ev.JobCompleted)


def test_a_second_executor_on_the_same_state_folder_is_refused(tmp_path: Path) -> None:
    held = twins.lock_node_folder(tmp_path)
    try:
        with pytest.raises(twins.TwinExecutor, match="uses the state folder"):
            twins.lock_node_folder(tmp_path)
    finally:
        os.close(held)
    os.close(twins.lock_node_folder(tmp_path))  # released with its holder
