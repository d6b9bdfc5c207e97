"""Replicas on a real three-node nats-server cluster (three processes on loopback): the log, the
lease and the outputs survive the loss of one server, and a single server says clearly that it cannot
hold three copies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_platform.bus import Bus, connect
from conductor_platform.localservers import LocalServer, free_port, start_nats
from tests.unit.scheduling import submitted

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[LocalServer]]:
    ports = [free_port() for _ in range(3)]
    routes = [free_port() for _ in range(3)]
    servers: list[LocalServer] = []
    try:
        for i in range(3):
            others = ",".join(f"nats://127.0.0.1:{r}" for j, r in enumerate(routes) if j != i)
            args = ("--name", f"n{i}", "--cluster_name", "conductor", "--cluster", f"nats://127.0.0.1:{routes[i]}")
            servers.append(start_nats(tmp_path / f"n{i}", ports[i], extra_args=(*args, "--routes", others)))
        yield servers
    finally:
        for server in servers:
            server.stop()


async def _connect_when_meta_leader(url: str, replicas: int) -> Bus:
    # A fresh cluster elects its JetStream meta leader a moment after the servers listen (longer on
    # a busy machine: the stream's creation can time out meanwhile).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    while True:
        try:
            return await connect(url, name="replicas-test", replicas=replicas, attempts=5)
        except (APIError, NatsTimeoutError, TimeoutError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_three_replicas_keep_the_log_when_a_server_dies(cluster: list[LocalServer]) -> None:
    bus = await _connect_when_meta_leader(",".join(s.url for s in cluster), replicas=3)
    try:
        info = await bus.js.stream_info(subjects.STREAM)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        lease = await bus.leases()
        assert (await lease.status()).stream_info.config.num_replicas == 3
        outputs = await bus.outputs()
        assert (await outputs.status()).stream_info.config.num_replicas == 3
        job_id = await bus.publish(submitted())
        leader = info.cluster.leader
        victim = next(s for i, s in enumerate(cluster) if f"n{i}" == leader)
        victim.process.kill()
        victim.process.wait()
        # The two left elect a new leader for the stream and take new events; the first one is kept.
        cancel = ev.JobCancelRequested(job_id=job_id)  # one event: a retry of a timed-out publish is deduplicated
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while True:
            try:
                await bus.publish(cancel)
                break
            except Exception:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.5)
        stored = await bus.js.get_msg(subjects.STREAM, seq=job_id)
        assert isinstance(ev.decode(stored.data or b""), ev.JobSubmitted)
        assert (await bus.js.stream_info(subjects.STREAM)).state.messages == 2
    finally:
        await bus.close()


async def test_a_single_server_refuses_three_replicas_clearly(nats_url: str) -> None:
    with pytest.raises(APIError, match=r"(?i)replicas"):
        await connect(nats_url, name="replicas-test", replicas=3, attempts=1)


async def test_a_failed_connect_leaves_no_client_behind(nats_url: str) -> None:
    before = {id(t) for t in asyncio.all_tasks()}
    with pytest.raises(APIError):
        await connect(nats_url, name="replicas-test", replicas=3, attempts=1)
    await asyncio.sleep(0.1)
    # nats-py runs reader, flusher and ping tasks per client; a closed client has none left.
    left = [t for t in asyncio.all_tasks() if id(t) not in before and not t.done()]
    assert not left, left
