"""Property tests of the whole HTTP surface against the real servers (issue 5, the class behind items 1
and 8): whatever a client sends, the answer is never a 5xx, and a submit the gateway accepts is one
every part downstream can hold: the projector writes it to PostgreSQL and moves on, and its paths,
environment and script are ones the OS and bash take.

Bounded (about 750 requests in all) so that it stays within seconds; raise ``EXAMPLES`` to dig deeper.
"""

from __future__ import annotations

import json
import string
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from conductor_contracts import events as ev
from conductor_contracts.paths import output_files, path_problem
from conductor_gateway.settings import GatewaySettings
from conductor_platform.bus import Bus
from conductor_projector import sink
from conductor_projector import tables as t
from tests.integration.test_gateway import gateway

EXAMPLES = 150
PROJECTION = "fuzz"
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # a finding is printed with its seed; nothing is left behind in the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture
async def client(bus: Bus, engine: AsyncEngine, nats_url: str, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    # A crash answers as the 500 a client would see, for the property to catch.
    settings = GatewaySettings(nats_url=nats_url, database_url=database_url, max_script_bytes=64 * 1024)
    async with gateway(settings, raise_app_exceptions=False) as c:
        yield c


# Characters of every kind, lone surrogates included (st.text leaves them out by default).
any_char = st.characters(codec=None, categories=None)
STRANGE = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "\n",
    "\x1b[2J",
    "\u200b",
    "\ufeff",
    "..",
    ".",
    "/",
    "%",
    "%x" * 130,
    "%u/" * 30,
    "9" * 500,
    "1" + "0" * 400 + "K",
    "2048T",
    "2047T",
    "99999999",
    "525600",
    "365-0",
    "366-0",
    "-1",
    "UNLIMITED",
    "1:2:3:4",
    "\u0663",
    "\u00b2",
    "é" * 130,
    "x" * 5000,
]
strange_text = st.one_of(st.sampled_from(STRANGE), st.text(any_char, max_size=40), st.text(max_size=300))
huge_ints = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([2**31, 2**63, 10**400, -(10**400)]))
scalars = st.one_of(st.none(), st.booleans(), huge_ints, st.floats(allow_nan=True, allow_infinity=True), strange_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(strange_text, inner, max_size=4)),
    max_leaves=12,
)


printable = st.characters(categories=["L", "M", "N", "P", "S"], include_characters=" ")
labels = st.one_of(
    *[st.text(printable, min_size=1, max_size=210)] * 6, st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)
)
path_chars = st.sampled_from([*string.ascii_letters, *"/._-%jxu ", "é", "\u4e00"])
patterns = st.one_of(st.text(path_chars, max_size=300), st.sampled_from(STRANGE))
# Values of the right shape, near and past every bound, so that many submits are accepted and go on
# downstream, and the edge of what is accepted is walked.
job_fields: dict[str, st.SearchStrategy[Any]] = {
    "name": labels,
    "account": labels,
    "partition": labels,
    "ntasks_per_node": st.integers(-2, 70),
    "cpus_per_task": st.integers(-2, 70),
    "memory_per_node": st.from_regex(r"\A ?[0-9]{1,4}[0-9]{0,12} ?[KMGTkmgt]?[Bb]? ?\Z"),
    "time_limit": st.one_of(
        st.from_regex(r"\A([0-9]{1,10}-)?[0-9]{1,10}(:[0-9]{1,10}){0,3}\Z"), st.sampled_from(["UNLIMITED", "-1"])
    ),
    "current_working_directory": st.builds(lambda p: "/" + p, patterns),
    "standard_output": st.one_of(st.none(), patterns),
    "standard_error": st.one_of(st.none(), patterns),
    "environment": st.dictionaries(st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,30}\Z"), st.text(max_size=50), max_size=5),
}
REQUIRED = ("name", "account", "current_working_directory")
shaped_jobs = st.fixed_dictionaries(
    {k: job_fields[k] for k in REQUIRED}, optional={k: v for k, v in job_fields.items() if k not in REQUIRED}
)
# ... and now and then a field of any JSON value at all, or of the strangest strings.
jobs = st.builds(
    lambda job, odd: job | odd,
    shaped_jobs,
    st.one_of(
        st.just({}),
        st.just({}),
        st.dictionaries(st.sampled_from([*job_fields, "dependency", "unknown"]), json_values, max_size=2),
    ),
)
scripts = st.one_of(
    st.sampled_from(["true", "echo hi\n"]),
    st.text(min_size=1, max_size=200),
    st.text(min_size=1, max_size=200),
    st.text(any_char, max_size=200),
    json_values,
)


def encode(value: Any) -> bytes:
    # ensure_ascii: lone surrogates travel as \ud800 escapes; allow_nan: NaN and Infinity, as some
    # clients (Python's own json) do write them.
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


async def post(client: httpx.AsyncClient, content: bytes, key: bytes | None = None) -> httpx.Response:
    headers = {b"Content-Type": b"application/json"}
    if key is not None:
        headers[b"Idempotency-Key"] = key
    return await client.post("/jobs/submit", content=content, headers=headers)


def assert_a_clear_answer(answer: httpx.Response) -> None:
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400:
        detail = answer.json()["detail"]
        assert detail, answer.text


async def project_new(bus: Bus, engine: AsyncEngine) -> tuple[int, int]:
    """Everything the log has past the projection's position, through the projector's real write
    path into PostgreSQL; returns (the position reached, the end of the log)."""
    async with engine.connect() as conn:
        start = await sink.position(conn, PROJECTION)
    end = int((await bus.js.stream_info(bus.stream)).state.last_seq)
    batch = []
    for seq in range(start + 1, end + 1):
        msg = await bus.js.get_msg(bus.stream, seq=seq)
        batch.append((seq, ev.decode(msg.data or b"")))
    reached = await sink.apply_batch(engine, PROJECTION, batch) if batch else start
    return reached, end


async def assert_downstream_holds(bus: Bus, engine: AsyncEngine, job_id: int) -> None:
    reached, end = await project_new(bus, engine)
    assert reached == end, "the projector did not get past an accepted submit"
    async with engine.connect() as conn:
        state = await conn.scalar(select(t.jobs.c.state).where(t.jobs.c.job_id == job_id))
    assert state == "PENDING"
    job = ev.decode((await bus.js.get_msg(bus.stream, seq=job_id)).data or b"")
    assert isinstance(job, ev.JobSubmitted)
    # What the executor will do with it: open its paths, pass its environment, hand bash the script.
    for path in (p for p in output_files(job_id, job) if p is not None):
        assert path_problem(path) is None, path
    assert path_problem(job.working_directory) is None
    for key, value in job.environment.items():
        assert key.isidentifier() and key.isascii() and "\x00" not in value
        value.encode()
    assert "\x00" not in job.script
    job.script.encode()


@settings(fuzz, max_examples=2 * EXAMPLES)
@given(job=jobs, script=scripts)
async def test_any_submit_is_answered_clearly_and_an_accepted_one_is_held_downstream(
    client: httpx.AsyncClient, bus: Bus, engine: AsyncEngine, job: dict[str, Any], script: Any
) -> None:
    answer = await post(client, encode({"job": job, "script": script}))
    assert_a_clear_answer(answer)
    event(f"status {answer.status_code}")
    if answer.status_code == 200:
        await assert_downstream_holds(bus, engine, int(answer.json()["job_id"]))


@fuzz
@given(
    body=st.one_of(json_values, st.fixed_dictionaries({"job": json_values, "script": json_values})),
    key=st.one_of(st.none(), st.binary(min_size=0, max_size=300)),
)
async def test_any_json_body_and_key_is_answered_clearly(
    client: httpx.AsyncClient, body: Any, key: bytes | None
) -> None:
    assert_a_clear_answer(await post(client, encode(body), key))


@fuzz
@given(content=st.one_of(st.binary(max_size=200), st.builds(lambda j: encode(j)[:-1], jobs)))
async def test_any_bytes_are_answered_clearly(client: httpx.AsyncClient, content: bytes) -> None:
    assert_a_clear_answer(await post(client, content))


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# Surrogates cannot be percent-encoded from a str; a server decodes invalid UTF-8 to U+FFFD anyway.
query_text = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=60),
    st.sampled_from([s for s in STRANGE if _encodable(s)]),
)


@fuzz
@given(
    params=st.dictionaries(
        st.sampled_from(["state", "account", "name", "cursor", "limit"]),
        st.one_of(query_text, st.integers(-(2**80), 2**80).map(str)),
    ),
    job_id=st.one_of(query_text, st.integers(-(2**80), 2**80).map(str)),
    stream=query_text,
)
async def test_any_query_and_path_is_answered_clearly(
    client: httpx.AsyncClient, params: dict[str, str], job_id: str, stream: str
) -> None:
    assert_a_clear_answer(await client.get("/jobs", params=params))
    job = quote(job_id, safe="") or "0"
    assert_a_clear_answer(await client.get(f"/jobs/query/{job}"))
    assert_a_clear_answer(await client.post(f"/jobs/cancel/{job}"))
    assert_a_clear_answer(await client.get(f"/jobs/{job}/output", params={"stream": stream}))
