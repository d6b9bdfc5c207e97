"""The HTTP gateway: validates, publishes events, answers from the read models.

It never writes Postgres and never calls another service: a submit is one awaited publish whose
stream sequence is the job id.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError
from prometheus_client import Counter, make_asgi_app
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conductor_contracts import api, subjects
from conductor_contracts import events as ev
from conductor_contracts.states import JobState
from conductor_gateway import queries, views
from conductor_gateway.settings import GatewaySettings
from conductor_platform.bus import Bus, connect
from conductor_platform.settings import async_database_url

log = logging.getLogger("conductor.gateway")

SUBMITS = Counter("conductor_gateway_submits_total", "Jobs accepted by the gateway")
CANCELS = Counter("conductor_gateway_cancels_total", "Cancel requests accepted by the gateway")


def _errors(*codes: int) -> dict[int | str, dict[str, object]]:
    meaning = {
        404: "no such job",
        409: "the job is in a state that does not allow this",
        413: "the script or the request is over the size limit",
        503: "NATS or PostgreSQL is unavailable; retry",
    }
    return {code: {"model": api.ErrorBody, "description": meaning[code]} for code in codes}


JobId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the job id returned by submit")]


class State:
    bus: Bus
    engine: AsyncEngine


def _read_local(path: str, max_bytes: int) -> str | None:
    """A job's output file when this gateway can see it (same machine or a shared file system)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - max_bytes))
            return f.read(max_bytes).decode(errors="replace")
    except OSError:
        return None


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    state = State()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.bus = await connect(settings.nats_url, name="conductor-gateway")
        state.engine = create_async_engine(async_database_url(settings.database_url), pool_size=5, pool_pre_ping=True)
        try:
            yield
        finally:
            await state.bus.close()
            await state.engine.dispose()

    app = FastAPI(title="SCNS-Conductor", version="0.1.0", lifespan=lifespan)
    app.mount("/metrics", make_asgi_app())

    @app.exception_handler(NatsError)
    @app.exception_handler(DBAPIError)
    @app.exception_handler(TimeoutError)
    @app.exception_handler(OSError)
    async def unavailable(_: Request, err: Exception) -> JSONResponse:
        # The log or the read models are away (restarting): say so, let the client retry.
        log.warning("backend unavailable", extra={"error": f"{type(err).__name__}: {err}"})
        return JSONResponse(
            {"detail": "the job log or the read models are unavailable; retry shortly"}, status_code=503
        )

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_script_bytes + 64 * 1024:
            return JSONResponse({"detail": f"request body over {settings.max_script_bytes} bytes"}, status_code=413)
        return await call_next(request)

    async def submission(job_id: int) -> ev.JobSubmitted | None:
        try:
            raw = await state.bus.js.get_msg(state.bus.stream, seq=job_id)
        except NotFoundError:
            return None
        if raw.subject != subjects.SUBMITTED:
            return None
        event = ev.decode(raw.data or b"")
        return event if isinstance(event, ev.JobSubmitted) else None

    async def find_job(job_id: int) -> api.JobView:
        row = await queries.job(state.engine, job_id)
        if row is not None:
            return views.job_from_row(row)
        submitted = await submission(job_id)
        if submitted is None:
            raise HTTPException(404, f"job {job_id} not found")
        return views.job_from_submission(job_id, submitted)

    @app.post("/jobs/submit", response_model=api.SubmitResponse, responses=_errors(413, 503))
    async def submit(
        body: api.SubmitRequest,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> api.SubmitResponse:
        if len(body.script.encode()) > settings.max_script_bytes:
            raise HTTPException(413, f"script over the limit of {settings.max_script_bytes} bytes")
        spec = body.job
        event = ev.JobSubmitted(
            name=spec.name,
            account=spec.account,
            partition=spec.partition,
            ntasks_per_node=spec.ntasks_per_node,
            cpus_per_task=spec.cpus_per_task,
            cpus=spec.cpus,
            memory_mb=spec.memory_mb,
            time_limit_s=spec.time_limit_s,
            working_directory=spec.current_working_directory,
            standard_output=spec.standard_output or "",
            standard_error=spec.standard_error,
            environment=spec.environment,
            script=body.script,
        )
        if len(ev.encode(event)) > subjects.STREAM_SPEC.max_msg_size - 4096:  # headers need room too
            # Reachable with a chunked body, which the Content-Length check above cannot see.
            raise HTTPException(413, "the job (script and environment) is over the size limit of one message")
        msg_id = f"submit:{idempotency_key}" if idempotency_key else None
        job_id = await state.bus.publish(event, msg_id=msg_id)
        SUBMITS.inc()
        log.info("submitted", extra={"job_id": job_id, "account": spec.account})
        return api.SubmitResponse(job_id=str(job_id))

    @app.get("/jobs/query/{job_id}", response_model=api.JobView, responses=_errors(404, 503))
    async def query(job_id: JobId) -> api.JobView:
        return await find_job(job_id)

    @app.post("/jobs/cancel/{job_id}", response_model=api.CancelResponse, responses=_errors(404, 409, 503))
    async def cancel(job_id: JobId) -> api.CancelResponse:
        job = await find_job(job_id)
        if JobState(job.state).is_terminal:
            raise HTTPException(409, f"job {job_id} already ended as {job.state}; nothing to cancel")
        await state.bus.publish(ev.JobCancelRequested(job_id=job_id), msg_id=f"cancel:{job_id}")
        CANCELS.inc()
        return api.CancelResponse(job_id=str(job_id), state=job.state, detail="cancel requested")

    @app.get("/jobs", response_model=api.JobList)
    async def list_jobs(
        state_: Annotated[JobState | None, Query(alias="state")] = None,
        account: str | None = None,
        name: str | None = None,
        cursor: Annotated[str | None, Query(pattern=r"^\d+$", description="next_cursor of the previous page")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = settings.page_size,
    ) -> api.JobList:
        rows = await queries.jobs(
            state.engine,
            state=state_.value if state_ else None,
            account=account,
            name=name,
            before=int(cursor) if cursor else None,
            limit=limit,
        )
        page = [views.job_from_row(r) for r in rows]
        next_cursor = page[-1].job_id if len(page) == limit else None
        return api.JobList(jobs=page, next_cursor=next_cursor)

    @app.get("/jobs/{job_id}/output", response_class=PlainTextResponse, responses=_errors(404, 409, 503))
    async def output(
        job_id: JobId, stream: Annotated[Literal["stdout", "stderr"], Query()] = "stdout"
    ) -> PlainTextResponse:
        job = await find_job(job_id)
        path = job.standard_output if stream == "stdout" else job.standard_error
        if path is None:
            raise HTTPException(404, f"job {job_id} has no separate stderr: it is joined to stdout")
        if job.state == JobState.PENDING:  # nothing of the job's yet: never read a path it merely names
            raise HTTPException(409, f"job {job_id} is PENDING: it has no output yet")
        if JobState(job.state).is_terminal:
            try:
                stored = await (await state.bus.outputs()).get(subjects.output_object(job_id, stream))
                return PlainTextResponse((stored.data or b"").decode(errors="replace"))
            except NotFoundError:
                pass
        text = await asyncio.to_thread(_read_local, path, settings.max_output_bytes)
        if text is not None:
            return PlainTextResponse(text)
        if job.state == JobState.RUNNING:
            raise HTTPException(409, f"job {job_id} runs on node {job.node}; its output is here when it ends")
        raise HTTPException(404, f"no {stream} was recorded for job {job_id}")

    @app.get("/nodes", response_model=api.NodeList)
    async def list_nodes() -> api.NodeList:
        return api.NodeList(nodes=[views.node_from_row(r) for r in await queries.nodes(state.engine)])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready when both backends answer; says how many events the read models are behind the log."""
        problems = []
        last = projected = 0
        if not state.bus.nc.is_connected:  # answer at once rather than wait out a request timeout
            problems.append("nats: not connected")
        else:
            try:
                last = int((await state.bus.js.stream_info(state.bus.stream)).state.last_seq)
            except Exception as err:
                problems.append(f"nats: {type(err).__name__}")
        try:
            projected = await queries.projected_position(state.engine)
        except Exception as err:
            problems.append(f"postgres: {type(err).__name__}")
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready", "log_position": last, "projector_lag": max(0, last - projected)})

    return app
