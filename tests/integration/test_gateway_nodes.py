"""Node states over HTTP: drain, resume, lost and back (gateway and projector in-process, real servers)."""

from __future__ import annotations

from typing import Any

import httpx

from conductor_contracts import events as ev
from conductor_platform.bus import Bus
from tests.integration.helpers import eventually
from tests.integration.test_gateway import body, client, projector
from tests.unit.scheduling import node

__all__ = ["client", "projector"]  # fixtures, used by name


async def _node(client: httpx.AsyncClient, state: str) -> dict[str, Any] | None:
    rows = (await client.get("/nodes")).json()["nodes"]
    return rows[0] if rows and rows[0]["state"] == state else None


async def _lost(client: httpx.AsyncClient, bus: Bus) -> None:
    """n1 declared lost: DOWN, with the scheduler's reason."""
    await bus.publish(ev.NodeLost(node="n1", reason="no heartbeat for 30 s"), by_scheduler=True)
    down = await eventually(lambda: _node(client, "DOWN"), what="lost")
    assert down["reason"] == "no heartbeat for 30 s"


async def test_drain_resume_lost_and_back(client: httpx.AsyncClient, bus: Bus, projector: None) -> None:
    assert (await client.post("/nodes/n1/drain", json={"reason": "x"})).status_code == 404
    await bus.publish(node("n1", 4, 2048))
    await eventually(lambda: _node(client, "UP"), what="node projected")
    job_id = int((await client.post("/jobs/submit", json=body(requeue=True))).json()["job_id"])
    await bus.publish(ev.JobPlaced(job_id=job_id, node="n1", cores=(0,), memory_mb=100), by_scheduler=True)
    drain = await client.post("/nodes/n1/drain", json={"reason": "disk swap"})
    assert drain.status_code == 200
    draining = await eventually(lambda: _node(client, "DRAINING"), what="draining")
    assert draining["reason"] == "disk swap"
    await bus.publish(node("n1", 4, 2048))  # its executor restarts: the drain holds
    await bus.publish(ev.JobCompleted(job_id=job_id, node="n1"))
    await eventually(lambda: _node(client, "DRAINED"), what="drained once its job ended")
    assert (await client.post("/nodes/n1/resume")).status_code == 200
    await eventually(lambda: _node(client, "UP"), what="resumed")
    await _lost(client, bus)
    await bus.publish(node("n1", 4, 2048))
    up = await eventually(lambda: _node(client, "UP"), what="back after registering")
    assert up["reason"] is None
    job = (await client.get(f"/jobs/query/{job_id}")).json()
    assert job["requeue"] is True and job["restarts"] == 0


async def test_a_drain_outlives_a_loss_and_a_resume_of_a_lost_node_leaves_it_down(
    client: httpx.AsyncClient, bus: Bus, projector: None
) -> None:
    # As the scheduler has it: a drain survives the node's loss and its registration; a lost node is
    # not UP before it registers, whatever was resumed.
    await bus.publish(node("n1", 4, 2048))
    await eventually(lambda: _node(client, "UP"), what="node projected")
    assert (await client.post("/nodes/n1/drain", json={"reason": "disk swap"})).status_code == 200
    await eventually(lambda: _node(client, "DRAINED"), what="drained")
    await _lost(client, bus)
    # DOWN showed only the loss: that it will come back drained was hidden until it did.
    assert (down := await _node(client, "DOWN")) is not None and down["drain"] == "disk swap"
    await bus.publish(node("n1", 4, 2048))
    drained = await eventually(lambda: _node(client, "DRAINED"), what="drained again once back")
    assert drained["reason"] == "disk swap"
    await bus.publish(ev.NodeLost(node="n1", reason="silent"), by_scheduler=True)
    await eventually(lambda: _node(client, "DOWN"), what="lost again")
    assert (await client.post("/nodes/n1/resume")).status_code == 200
    marker = await bus.publish(node("n2", 1, 100))  # handled after the resume
    await eventually(lambda: _named(client, "n2"), what=f"the marker {marker} projected")
    assert await _node(client, "DOWN"), "a lost node shown up before it registered"
    await bus.publish(node("n1", 4, 2048))
    up = await eventually(lambda: _node(client, "UP"), what="up once it registered, the drain resumed")
    assert up["reason"] is None and up["drain"] is None


async def _named(client: httpx.AsyncClient, name: str) -> bool:
    return any(row["name"] == name for row in (await client.get("/nodes")).json()["nodes"])


async def test_a_requeued_job_shows_its_restarts(client: httpx.AsyncClient, bus: Bus, projector: None) -> None:
    await bus.publish(node("n1", 4, 2048))
    job_id = int((await client.post("/jobs/submit", json=body(requeue=True))).json()["job_id"])
    await bus.publish(ev.JobPlaced(job_id=job_id, node="n1", cores=(0,), memory_mb=100), by_scheduler=True)
    await bus.publish(ev.JobRequeued(job_id=job_id, node="n1", run=0, reason="node n1 was lost"), by_scheduler=True)

    async def requeued() -> dict[str, Any] | None:
        job = dict((await client.get(f"/jobs/query/{job_id}")).json())
        return job if job["restarts"] == 1 else None

    job = await eventually(requeued, what="requeue projected")
    assert (job["state"], job["reason"], job["node"]) == ("PENDING", "Requeued", None)
    nodes = (await client.get("/nodes")).json()["nodes"]
    assert nodes[0]["cpus_alloc"] == 0


async def test_bad_drain_requests_are_clear(client: httpx.AsyncClient, bus: Bus, projector: None) -> None:
    assert (await client.post("/nodes/nope/resume")).status_code == 404
    await bus.publish(node("n1", 4, 2048))
    await eventually(lambda: _node(client, "UP"), what="node projected")
    too_long = await client.post("/nodes/n1/drain", json={"reason": "x" * 201})
    assert too_long.status_code == 422 and "at most 200 characters" in str(too_long.json()["detail"])
    # Shown in GET /nodes and in terminals: printable, as every label.
    control = await client.post("/nodes/n1/drain", json={"reason": "\u202e\n\u0007"})
    assert control.status_code == 422 and "printable" in str(control.json()["detail"])
    nul = await client.post(
        "/nodes/n1/drain", content=b'{"reason": "a\\u0000b"}', headers={"content-type": "application/json"}
    )
    assert nul.status_code == 422
    unknown_field = await client.post("/nodes/n1/drain", json={"why": "x"})
    assert unknown_field.status_code == 422
    assert (await client.post("/nodes/n1/drain")).status_code == 200  # no body: no reason
