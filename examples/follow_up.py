"""Automation on the bus: when a job of a given name completes, submit a follow-up job.

A FastStream subscriber against the contracts: it takes JobCompleted from the log (a durable
consumer, so completions while it is down are handled when it is back), reads the completed job's
name from its JobSubmitted (at stream sequence = job id), and submits the follow-up over the
gateway's HTTP API with an Idempotency-Key, so a completion delivered twice makes one job.

    NATS_URL=nats://127.0.0.1:4222 CONDUCTOR_URL=http://127.0.0.1:8000 \\
        python examples/follow_up.py nightly-build ./run-tests.sh
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from faststream import FastStream
from faststream.nats import DeliverPolicy, JStream, NatsBroker
from faststream.nats.annotations import JsClient
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from conductor_contracts import events as ev
from conductor_contracts import subjects
from conductor_contracts.catalogue import subject_patterns

# JobCompleted's subjects (an executor's, and the scheduler's for a no-op job), ids as wildcards.
COMPLETED = [p.replace("{job_id}", "*").replace("{node}", "*") for p in subject_patterns(ev.JobCompleted)]


def follow_up_request(done: ev.JobSubmitted, job_id: int, script: str) -> dict[str, Any]:
    """The follow-up: in the completed job's account, partition and folder, told which job it follows."""
    return {
        "job": {
            "name": f"{done.name}-follow-up",
            "account": done.account,
            "partition": done.partition,
            "ntasks_per_node": 1,
            "cpus_per_task": 1,
            "memory_per_node": "100M",
            "time_limit": "10",
            "current_working_directory": done.working_directory,
            "environment": {"PREDECESSOR_JOB_ID": str(job_id)},
        },
        "script": script,
    }


def build(nats_url: str, gateway_url: str, watch: str, script: str, durable: str = "follow-up") -> NatsBroker:
    broker = NatsBroker(nats_url)
    stream = JStream(subjects.STREAM, declare=False)  # the log exists; the example only reads it
    http = httpx.AsyncClient(base_url=gateway_url, timeout=10)

    async def on_completed(event: ev.JobCompleted, js: JsClient) -> None:
        try:
            raw = await js.get_msg(subjects.STREAM, seq=event.job_id)
            done = ev.decode(raw.data or b"")
        except (NotFoundError, ValidationError):
            return  # not a job this contract knows
        if not isinstance(done, ev.JobSubmitted) or done.name != watch:
            return
        answer = await http.post(
            "/jobs/submit",
            json=follow_up_request(done, event.job_id, script),
            headers={"Idempotency-Key": f"follow-up-of-{event.job_id}"},
        )
        # Raising leaves the message unacknowledged: it is delivered again, and the key makes it one job.
        answer.raise_for_status()

    for i, subject in enumerate(COMPLETED):
        # A durable pull consumer (FastStream's advice for durables: several instances may share it).
        subscriber = broker.subscriber(
            subject, stream=stream, durable=f"{durable}-{i}", pull_sub=True, deliver_policy=DeliverPolicy.NEW
        )
        subscriber(on_completed)
    return broker


def main() -> None:
    watch, script_path = sys.argv[1], Path(sys.argv[2])
    broker = build(
        os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
        os.environ.get("CONDUCTOR_URL", "http://127.0.0.1:8000"),
        watch,
        script_path.read_text(),
    )
    asyncio.run(FastStream(broker).run())


if __name__ == "__main__":
    main()
