"""The HTTP gateway: validates, publishes events, answers from the read models.

It never writes Postgres and never calls another service: a submit is one awaited publish whose
stream sequence is the job id.

A NATS connection nats-py closed for good (conductor_platform/closed.py) is never opened again: the
requests that need it are answered 503, and ``on_closed_for_good`` is called, with which
``__main__`` stops serving and exits, for its supervisor to start the gateway again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from nats.js.errors import NotFoundError
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY, Counter
from prometheus_client.exposition import choose_encoder
from pydantic import BeforeValidator

from conductor_contracts import api, subjects
from conductor_contracts import events as ev
from conductor_contracts.states import JobState
from conductor_contracts.text import printable
from conductor_gateway import bus_spec, errors, feed, queries, views, workflows
from conductor_gateway.backends import State, job_submitted, missing_jobs, submission
from conductor_gateway.errors import digits
from conductor_gateway.fast_submit import FastSubmit
from conductor_gateway.http_metrics import HttpMetrics
from conductor_gateway.limits import BodyLimit
from conductor_gateway.live_output import read_live
from conductor_gateway.params import REQUEST_HASH_HEADER, Filter, IdempotencyKey, once_each, one_idempotency_key
from conductor_gateway.settings import GatewaySettings
from conductor_platform import closed, database, tracing
from conductor_platform.bus import Bus, connect
from conductor_platform.retry import Stopped, or_stop

log = logging.getLogger("conductor.gateway")

SUBMITS = Counter("conductor_gateway_submits_total", "Jobs accepted by the gateway")
CANCELS = Counter("conductor_gateway_cancels_total", "Cancel requests accepted by the gateway")


MAX_JOB_ID = 2**63 - 1  # ids are stream sequences, kept in BIGINT columns
JobId = Annotated[int, BeforeValidator(digits), Path(ge=1, le=MAX_JOB_ID, description="the job id returned by submit")]
NodeName = Annotated[str, Path(min_length=1, max_length=api.MAX_LABEL_CHARS, description="a node's name")]

SUBMIT_SPAN = "conductor.gateway.submit"
CANCEL_SPAN = "conductor.gateway.cancel"


async def _connect_unless(settings: GatewaySettings, stopping: Callable[[], bool]) -> Bus | None:
    """The connection, or None once ``stopping()`` (uvicorn was asked to stop: SIGTERM, Ctrl-C)
    while NATS was still away: nats-py tries a first connection for ever, and uvicorn waits for the
    lifespan's start before it acts on a signal."""
    stop = asyncio.Event()

    async def watch() -> None:
        while not stopping():  # noqa: ASYNC110 (uvicorn's should_exit is a flag, with no event to wait on)
            await asyncio.sleep(0.2)
        stop.set()

    watching = asyncio.create_task(watch())
    try:
        return await or_stop(
            connect(settings.nats_url, name="conductor-gateway", replicas=settings.stream_replicas), stop
        )
    except Stopped:
        return None
    finally:
        watching.cancel()


def create_app(
    settings: GatewaySettings | None = None,
    on_closed_for_good: Callable[[closed.ConnectionClosedForGood], None] | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> FastAPI:
    """``on_closed_for_good``: called once, when nats-py has closed the NATS connection for good.
    ``stopping``: true once the server was asked to stop; a start still waiting for NATS then ends."""
    settings = settings or GatewaySettings()
    state = State()

    async def watch_connection() -> None:
        # Also while no request comes: an idle gateway must not sit on a dead connection for ever.
        try:
            await closed.watch(lambda: state.bus)
        except closed.ConnectionClosedForGood as err:
            closed.report(err)
            if on_closed_for_good is not None:
                on_closed_for_good(err)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        bus = await _connect_unless(settings, stopping)
        if bus is None:
            yield  # nothing was opened; uvicorn, asked to stop, ends at once
            return
        state.bus = bus
        state.engine = database.engine(settings.database_url, timeout_s=settings.database_timeout_s, pre_ping=True)
        watching = asyncio.create_task(watch_connection())
        try:
            yield
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            await state.bus.close()
            await state.engine.dispose()

    app = FastAPI(title="SCNS-Conductor", version="0.1.0", lifespan=lifespan, dependencies=[Depends(once_each)])

    # Routes, not a mount of prometheus_client's app: a mount answers /metrics with a redirect to
    # /metrics/ (still answered, for whoever scrapes that). Sync, so a scrape is collected in the
    # thread pool, off the event loop.
    @app.get("/metrics", include_in_schema=False)
    @app.get("/metrics/", include_in_schema=False)
    def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(REGISTRY), media_type=content_type)

    async def unavailable(request: Request, err: Exception) -> JSONResponse:
        # The log or the read models are away (restarting): say so, let the client retry.
        log.warning("backend unavailable", extra={"error": f"{type(err).__name__}: {err}"})
        if closed.closed_for_good(getattr(state, "bus", None)):
            detail = "this gateway lost its connection to the job log and is restarting; retry shortly"
        elif isinstance(err, errors.NothingRecorded):
            detail = "the read models or the job log did not answer in time; nothing was recorded: retry shortly"
        elif request.method == "POST" and isinstance(err, TimeoutError):
            # A write the server did not acknowledge in time may be stored all the same.
            detail = (
                "the job log did not answer in time: what was asked may have been recorded. Look before you "
                "retry: a cancel asked again is harmless, a user of the same name is a 409 once the first is "
                "stored, a job or a workflow submitted again with the same Idempotency-Key is one, without one "
                "it may be two"
            )
        else:
            detail = "the job log or the read models are unavailable; retry shortly"
        return JSONResponse({"detail": detail}, status_code=503)

    for backend_error in (*errors.BACKEND_DOWN, errors.NothingRecorded):
        app.add_exception_handler(backend_error, unavailable)

    @app.exception_handler(Exception)
    async def failed(_: Request, err: Exception) -> JSONResponse:
        # A bug: said in one line to the client (never a traceback), logged whole here.
        log.exception("request failed", extra={"error": f"{type(err).__name__}: {err}"[:500]})
        return JSONResponse({"detail": "internal error: the gateway failed on this request"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": errors.validation_errors(err)}, status_code=422)

    # JSON may spell each character of the script as a six-byte escape (\u0416): the body may be six
    # times what it holds. What it holds is checked once parsed (the script's own limit, in UTF-8).
    body_max = 6 * (settings.max_script_bytes + api.MAX_ENV_BYTES) + 64 * 1024
    # Innermost of the three: a submit it answers is still under the body limits and counted.
    app.add_middleware(FastSubmit, fastapi=app, accept=lambda *args: accept(*args))
    app.add_middleware(BodyLimit, max_bytes=body_max, timeout_s=settings.body_timeout_s)
    app.add_middleware(HttpMetrics, routes_of=app)  # outermost: a 413 or 408 is counted too

    async def find_job(job_id: int) -> api.JobView:
        row = await queries.job(state.engine, job_id)
        if row is not None:
            return views.job_from_row(row)
        submitted = await submission(state.bus, job_id)
        if submitted is None:
            raise HTTPException(404, f"job {job_id} not found")
        # Not projected yet, or never: a submission the read models could not hold is a dead letter,
        # and the job must say so rather than look PENDING for ever.
        refused = await queries.dead_letter_of(state.engine, job_id)
        return views.job_from_submission(job_id, submitted, refused)

    @app.post("/jobs/submit", response_model=api.SubmitResponse, responses=errors.documented(413, 503))
    async def submit(
        request: Request,
        body: api.SubmitRequest,
        idempotency_key: IdempotencyKey = None,
    ) -> api.SubmitResponse:
        one_idempotency_key(request)
        return await accept(body, idempotency_key, request)

    async def accept(body: api.SubmitRequest, idempotency_key: str | None, request: Request) -> api.SubmitResponse:
        """A validated submit, from the route or from FastSubmit (the same request, fewer layers)."""
        if len(body.script.encode()) > settings.max_script_bytes:
            raise HTTPException(413, f"script over the limit of {settings.max_script_bytes} bytes")
        spec = body.job
        dependency = spec.parsed_dependency
        if dependency is not None and (
            missing := await errors.before_recording(missing_jobs(state, dependency.job_ids))
        ):
            shown = ", ".join(str(j) for j in missing[:10])
            raise HTTPException(422, f"dependency: no job {shown}{' ...' if len(missing) > 10 else ''}")
        event = job_submitted(spec, body.script)
        if len(ev.encode(event)) > subjects.STREAM_SPEC.max_event_bytes:
            # The event escapes what the request may have sent raw (a control character takes six
            # bytes in JSON, a quote two): a script within its own limit can still be too large here.
            raise HTTPException(413, "the job (script and environment) is over the size limit of one message")
        if tracing.enabled():
            # The job's trace begins here (or goes on from the client's, if it sent a traceparent), and
            # its JobSubmitted carries it to the scheduler.
            with tracing.span(SUBMIT_SPAN, tracing.of_request(request.headers), kind=SpanKind.SERVER) as traceparent:
                job_id = await publish_submission(event, body, idempotency_key, traceparent)
                tracing.annotate(**{tracing.JOB_ID: job_id})
        else:  # no span to make: not even the context manager, held across the publish's await
            job_id = await publish_submission(event, body, idempotency_key, None)
        SUBMITS.inc()
        # DEBUG: at INFO a line per submit was ~15 us of ~300; the JobSubmitted in the log (with its
        # account) and the span (with the job id) already record each one.
        log.debug("submitted", extra={"job_id": job_id, "account": spec.account})
        return api.SubmitResponse(job_id=str(job_id))

    async def publish_submission(
        event: ev.JobSubmitted, body: api.SubmitRequest, key: str | None, traceparent: str | None
    ) -> int:
        """Publish; with an Idempotency-Key, the stream's deduplication answers a retry with the first
        job, and the request hash kept on that job's message tells a retry from a reuse of the key.
        The log is the only state: any gateway answers any retry the same way."""
        trace_headers = tracing.headers(traceparent)
        if key is None:
            return await state.bus.publish(event, headers=trace_headers)
        fingerprint = body.fingerprint()
        # Scoped by account: two accounts may pick the same key. Hashed: a plain, bounded header value
        # whatever the account's characters, and no ambiguity where the account ends and the key begins.
        scope = hashlib.sha256(f"{event.account}\n{key}".encode()).hexdigest()
        ack = await state.bus.publish_acked(
            event, msg_id=f"submit:{scope}", headers=trace_headers | {REQUEST_HASH_HEADER: fingerprint}
        )
        if not ack.duplicate:
            return int(ack.seq)
        try:
            first = await state.bus.js.get_msg(state.bus.stream, seq=ack.seq)
        except NotFoundError:  # the server still knows the key, but the message was removed
            raise HTTPException(
                422, f"Idempotency-Key was used for job {ack.seq}, which is no longer in the log; use a new key"
            ) from None
        if (first.headers or {}).get(REQUEST_HASH_HEADER) != fingerprint:
            raise HTTPException(
                422,
                f"Idempotency-Key was already used for another request (job {ack.seq}) by this account; "
                "use a new key for a new job",
            )
        return int(ack.seq)

    @app.get("/jobs/query/{job_id}", response_model=api.JobView, responses=errors.documented(404, 503))
    async def query(job_id: JobId) -> api.JobView:
        return await find_job(job_id)

    @app.post("/jobs/cancel/{job_id}", response_model=api.CancelResponse, responses=errors.documented(404, 409, 503))
    async def cancel(request: Request, job_id: JobId) -> api.CancelResponse:
        job = await errors.before_recording(find_job(job_id))
        if JobState(job.state).is_terminal:
            raise HTTPException(409, f"job {job_id} already ended as {job.state}; nothing to cancel")
        attributes = {tracing.JOB_ID: job_id}
        with tracing.span(
            CANCEL_SPAN, tracing.of_request(request.headers), attributes, kind=SpanKind.SERVER
        ) as traceparent:
            await state.bus.publish(
                ev.JobCancelRequested(job_id=job_id), msg_id=f"cancel:{job_id}", headers=tracing.headers(traceparent)
            )
        CANCELS.inc()
        return api.CancelResponse(job_id=str(job_id), state=job.state, detail="cancel requested")

    @app.get("/jobs", response_model=api.JobList)
    async def list_jobs(
        state_: Annotated[JobState | None, Query(alias="state")] = None,
        account: Filter = None,
        name: Filter = None,
        cursor: Annotated[
            int | None,
            BeforeValidator(digits),
            Query(ge=1, le=MAX_JOB_ID, description="next_cursor of the previous page"),
        ] = None,
        limit: Annotated[int, BeforeValidator(digits), Query(ge=1, le=500)] = settings.page_size,
    ) -> api.JobList:
        rows = await queries.jobs(
            state.engine,
            state=state_.value if state_ else None,
            account=account,
            name=name,
            before=cursor,
            limit=limit,
        )
        page = [views.job_from_row(r) for r in rows]
        next_cursor = page[-1].job_id if len(page) == limit else None
        return api.JobList(jobs=page, next_cursor=next_cursor)

    @app.get("/jobs/{job_id}/output", response_class=PlainTextResponse, responses=errors.documented(404, 409, 503))
    async def output(
        job_id: JobId, stream: Annotated[Literal["stdout", "stderr"], Query()] = "stdout"
    ) -> PlainTextResponse:
        job = await find_job(job_id)
        path = job.standard_output if stream == "stdout" else job.standard_error
        if path is None or (stream == "stderr" and path == job.standard_output):  # one file, kept as stdout
            raise HTTPException(404, f"job {job_id} has no separate stderr: it is joined to stdout")
        if job.state == JobState.PENDING:
            raise HTTPException(409, f"job {job_id} is PENDING: it has no output yet")
        if JobState(job.state).is_terminal:
            # Only what the executor stored: the path is the user's, and the gateway never opens it
            # for a job that has ended (nor for one that never started).
            try:
                stored = await (await state.bus.outputs()).get(subjects.output_object(job_id, stream))
            except NotFoundError:
                if job.start_time is None:
                    raise HTTPException(404, f"job {job_id} ended as {job.state} before it started") from None
                # Its executor stores nothing for an empty or missing file (the common case: a job
                # that printed nothing); a refused upload, which it logs, looks the same from here.
                return PlainTextResponse("")
            return PlainTextResponse((stored.data or b"").decode(errors="replace"))
        if job.start_time is None:
            raise HTTPException(409, f"job {job_id} runs on node {job.node} (not started yet); no output yet")
        # Started: the executor has opened this path as the job's output (truncating what was there).
        if settings.local_output:
            text = await asyncio.to_thread(read_live, path, settings.max_output_bytes)
            if text is not None:
                return PlainTextResponse(text)
        raise HTTPException(409, f"job {job_id} runs on node {job.node}; its output is here when it ends")

    app.include_router(workflows.router(state, settings))

    @app.get("/nodes", response_model=api.NodeList)
    async def list_nodes() -> api.NodeList:
        return api.NodeList(nodes=[views.node_from_row(r) for r in await queries.nodes(state.engine)])

    async def node_event(name: str, event: ev.Event, done: str) -> api.NodeActionResponse:
        if not any(n["name"] == name for n in await errors.before_recording(queries.nodes(state.engine))):
            raise HTTPException(404, f"node {printable(name, 100)} not found")
        await state.bus.publish(event)
        return api.NodeActionResponse(name=name, detail=done)

    @app.post("/nodes/{name}/drain", response_model=api.NodeActionResponse, responses=errors.documented(404, 503))
    async def drain(name: NodeName, body: api.DrainRequest | None = None) -> api.NodeActionResponse:
        """No new placements on the node; what runs there finishes (DRAINING, then DRAINED)."""
        reason = body.reason if body is not None else ""
        return await node_event(name, ev.NodeDrainRequested(node=name, reason=reason), "drain requested")

    @app.post("/nodes/{name}/resume", response_model=api.NodeActionResponse, responses=errors.documented(404, 503))
    async def resume(name: NodeName) -> api.NodeActionResponse:
        return await node_event(name, ev.NodeResumeRequested(node=name), "resume requested")

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

    app.include_router(feed.router(state, settings))
    app.include_router(bus_spec.router(settings))

    return app
