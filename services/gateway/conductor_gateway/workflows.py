"""Users and workflows (the second seed's API): publish their events, answer from the read models,
and from the log for what is not projected yet."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from nats.js.errors import APIError, NotFoundError
from opentelemetry.trace import SpanKind
from pydantic import BeforeValidator, ValidationError

from conductor_contracts import api, subjects
from conductor_contracts import api_workflows as wf
from conductor_contracts import events as ev
from conductor_contracts.states import JobState
from conductor_contracts.text import printable
from conductor_gateway import errors, queries, views
from conductor_gateway.backends import State, job_submitted, last_on, submission
from conductor_gateway.errors import digits
from conductor_gateway.params import REQUEST_HASH_HEADER, IdempotencyKey, one_idempotency_key
from conductor_gateway.settings import GatewaySettings
from conductor_platform import tracing
from conductor_platform.bus import WRONG_LAST_SEQUENCE, BatchRefused

# All of a workflow's events together; below what a batch of the stream's messages may hold.
MAX_WORKFLOW_BYTES = 16 * 1024 * 1024
USER_RESPONSES = errors.documented(404, 503)
WORKFLOW_SPAN = "conductor.gateway.workflow"
WORKFLOW_ID = "conductor.workflow_id"


def _response(workflow_id: str, stored_at: int, job_count: int) -> wf.WorkflowResponse:
    """The answer to a workflow stored at ``stored_at``: its jobs' submissions follow it, in one batch."""
    job_ids = [str(stored_at + 1 + i) for i in range(job_count)]
    return wf.WorkflowResponse(workflow_id=workflow_id, job_count=job_count, job_ids=job_ids)


def _job_error(index: int, err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return printable(f"job {index}: {where + ': ' if where else ''}{first.get('msg', '')}", 1000)


def _user(user_id: str, username: str, created_at: datetime) -> wf.UserView:
    return wf.UserView(id=user_id, username=username, created_at=created_at)


def router(state: State, settings: GatewaySettings) -> APIRouter:
    routes = APIRouter()

    async def find_user(user_id: uuid.UUID) -> wf.UserView:
        row = await queries.user(state.engine, str(user_id))
        if row is not None:
            return _user(row["user_id"], row["username"], row["created_at"])
        found = await last_on(state.bus, subjects.user_subject(str(user_id)))
        if found is None or not isinstance(found[1], ev.UserCreated):
            raise HTTPException(404, f"user {user_id} not found")
        created = found[1]
        return _user(created.user_id, created.username, created.occurred_at)

    @routes.post(
        "/users/", response_model=wf.UserView, status_code=200, responses=errors.documented(409, 503), tags=["users"]
    )
    async def create_user(body: wf.UserCreate) -> wf.UserView:
        event = ev.UserCreated(user_id=wf.user_id_of(body.username), username=body.username)
        try:
            # One message per user on its own subject, stored only if that subject has none yet: the
            # stream refuses a second user of the same name, whichever gateway publishes it.
            await state.bus.publish_acked(event, headers={"Nats-Expected-Last-Subject-Sequence": "0"})
        except APIError as err:
            if err.err_code == WRONG_LAST_SEQUENCE:
                raise HTTPException(409, f"a user named {body.username!r} already exists") from None
            raise
        return _user(event.user_id, event.username, event.occurred_at)

    @routes.get("/users/{user_id}", response_model=wf.UserView, responses=USER_RESPONSES, tags=["users"])
    async def get_user(user_id: uuid.UUID) -> wf.UserView:
        return await find_user(user_id)

    @routes.get("/users", response_model=wf.UserList, responses=errors.documented(503), tags=["users"])
    async def list_users(
        limit: Annotated[int, BeforeValidator(digits), Query(ge=1, le=1000)] = 500,
        cursor: Annotated[uuid.UUID | None, Query(description="next_cursor of the previous page")] = None,
    ) -> wf.UserList:
        rows = await queries.users(state.engine, limit, None if cursor is None else str(cursor))
        if rows is None:
            raise HTTPException(422, f"cursor {cursor} is no user's: use the next_cursor of a page")
        users = [_user(r["user_id"], r["username"], r["created_at"]) for r in rows]
        return wf.UserList(users=users, next_cursor=users[-1].id if len(users) == limit else None)

    @routes.post(
        "/workflows/",
        response_model=wf.WorkflowResponse,
        responses=errors.documented(404, 413, 503),
        tags=["workflows"],
    )
    async def submit_workflow(
        request: Request, body: wf.WorkflowRequest, idempotency_key: IdempotencyKey = None
    ) -> wf.WorkflowResponse:
        one_idempotency_key(request)
        user = await errors.before_recording(find_user(body.user_id))
        workflow_id = str(uuid.uuid4()) if idempotency_key is None else wf.workflow_id_of(user.id, idempotency_key)
        events: list[ev.Event] = [
            ev.WorkflowSubmitted(
                workflow_id=workflow_id, user_id=user.id, owner=user.username, job_count=len(body.jobs), name=body.name
            )
        ]
        for index, job in enumerate(body.jobs):
            try:
                spec = job.job_spec(user.username)
            except ValidationError as err:
                raise HTTPException(422, _job_error(index, err)) from None
            script = job.script
            if script is not None:
                if (problem := api.script_problem(script)) is not None:
                    hint = " (leave it out for a no-op job)" if problem == "script is empty" else ""
                    raise HTTPException(422, f"job {index}: {problem}{hint}")
                if len(script.encode()) > settings.max_script_bytes:
                    raise HTTPException(413, f"job {index}: script over the limit of {settings.max_script_bytes} bytes")
            events.append(
                job_submitted(
                    spec,
                    script or "",
                    noop=script is None,
                    workflow_id=workflow_id,
                    workflow_index=index,
                    parent_indices=tuple(job.parent_indices),
                    branch_id=job.branch_id,
                    job_type=job.job_type,
                )
            )
        sizes = [len(ev.encode(e)) for e in events]
        one_message = subjects.STREAM_SPEC.max_event_bytes
        if (largest := max(sizes)) > one_message:
            # A script within max_script_bytes can still be over: JSON writes a control character in 6 bytes.
            index = sizes.index(largest) - 1
            which = "the workflow's own event" if index < 0 else f"job {index}"
            detail = f"{which} is over the size limit of one message ({largest} of {one_message} bytes)"
            raise HTTPException(413, detail)
        if sum(sizes) > MAX_WORKFLOW_BYTES:
            raise HTTPException(413, f"the workflow is over the size limit ({MAX_WORKFLOW_BYTES} bytes in all)")
        # One trace for the whole workflow: every job's JobSubmitted carries the submit's traceparent.
        attributes = {WORKFLOW_ID: workflow_id}
        # With a key: stored only if the workflow's subject holds nothing yet, and with a hash of the
        # request, so that a retry is answered with the first and a reuse of the key is told from it.
        fingerprint = body.fingerprint()
        keyed = (
            None
            if idempotency_key is None
            else {"Nats-Expected-Last-Subject-Sequence": "0", REQUEST_HASH_HEADER: fingerprint}
        )
        known = None if keyed is None else await errors.before_recording(queries.workflow(state.engine, workflow_id))
        if known is not None:
            # Known to the read models: in the log still (a retry), or compacted out of it, where the
            # stream's expectation would hold again and store a second set of jobs under its id.
            return await _submitted_before(workflow_id, fingerprint)
        with tracing.span(WORKFLOW_SPAN, tracing.of_request(request.headers), attributes, kind=SpanKind.SERVER) as tp:
            try:
                last = await state.bus.publish_batch(events, headers=tracing.headers(tp), first_headers=keyed)
            except BatchRefused as err:
                if keyed is None or err.err_code != WRONG_LAST_SEQUENCE:
                    raise HTTPException(
                        503, f"the job log refused the workflow: {printable(str(err), 300)}; retry"
                    ) from None
                return await _submitted_before(workflow_id, fingerprint)
        return _response(workflow_id, last - len(body.jobs), len(body.jobs))

    async def _submitted_before(workflow_id: str, fingerprint: str) -> wf.WorkflowResponse:
        """The answer to the request that stored the workflow of this key, if it was this request."""
        try:
            stored = await state.bus.js.get_last_msg(state.bus.stream, subjects.workflow_subject(workflow_id))
        except NotFoundError:  # removed by ``conductor compact``: what it was asked with is gone
            raise HTTPException(
                422,
                f"Idempotency-Key was used for workflow {workflow_id}, which is no longer in the log; use a new key",
            ) from None
        try:
            event: ev.Event | None = ev.decode(stored.data or b"")
        except ValueError:  # another writer's garbage on the subject: not a workflow of this request
            event = None
        if (
            not isinstance(event, ev.WorkflowSubmitted)
            or (stored.headers or {}).get(REQUEST_HASH_HEADER) != fingerprint
        ):
            raise HTTPException(
                422,
                f"Idempotency-Key was already used for another workflow ({workflow_id}) by this user; "
                "use a new key for a new workflow",
            )
        return _response(workflow_id, int(stored.seq or 0), event.job_count)

    async def find_workflow(workflow_id: uuid.UUID) -> wf.WorkflowView:
        row = await queries.workflow(state.engine, str(workflow_id))
        if row is not None:
            # The row holds the event's fields (and when it was submitted as submit_time).
            submitted = ev.WorkflowSubmitted.model_validate(dict(row) | {"occurred_at": row["submit_time"]})
            first = int(row["first_job_id"])
        else:
            found = await last_on(state.bus, subjects.workflow_subject(str(workflow_id)))
            if found is None or not isinstance(found[1], ev.WorkflowSubmitted):
                raise HTTPException(404, f"workflow {workflow_id} not found")
            first, submitted = found[0] + 1, found[1]
        projected = {
            int(r["job_id"]): views.job_from_row(r) for r in await queries.workflow_jobs(state.engine, str(workflow_id))
        }
        jobs: list[wf.WorkflowJobView] = []
        for index in range(submitted.job_count):
            job_id = first + index
            job = projected.get(job_id)
            if job is None:  # not projected yet: its submission, from the log
                event = await submission(state.bus, job_id)
                if event is None:
                    continue
                job = views.job_from_submission(job_id, event)
            jobs.append(views.workflow_job(index, job, [int(p) - first for p in job.parents]))
        return views.workflow(submitted, jobs)

    @routes.get(
        "/workflows/{workflow_id}",
        response_model=wf.WorkflowView,
        responses=errors.documented(404, 503),
        tags=["workflows"],
    )
    async def get_workflow(workflow_id: uuid.UUID) -> wf.WorkflowView:
        return await find_workflow(workflow_id)

    @routes.get("/workflows", response_model=wf.WorkflowList, tags=["workflows"])
    async def list_workflows(
        user_id: uuid.UUID | None = None,
        cursor: Annotated[
            int | None,
            BeforeValidator(digits),
            Query(ge=1, le=2**63 - 1, description="next_cursor of the previous page"),
        ] = None,
        limit: Annotated[int, BeforeValidator(digits), Query(ge=1, le=500)] = settings.page_size,
    ) -> wf.WorkflowList:
        rows = await queries.workflows(
            state.engine, user_id=None if user_id is None else str(user_id), before=cursor, limit=limit
        )
        page = [wf.WorkflowSummary.model_validate(dict(r)) for r in rows]  # the columns are its fields
        next_cursor = str(rows[-1]["first_job_id"]) if len(rows) == limit else None
        return wf.WorkflowList(workflows=page, next_cursor=next_cursor)

    @routes.post(
        "/workflows/{workflow_id}/cancel",
        response_model=wf.WorkflowCancelResponse,
        responses=errors.documented(404, 503),
        tags=["workflows"],
    )
    async def cancel_workflow(workflow_id: uuid.UUID) -> wf.WorkflowCancelResponse:
        workflow = await errors.before_recording(find_workflow(workflow_id))
        open_jobs = [int(j.job_id) for j in workflow.jobs if not JobState(j.state).is_terminal]
        if open_jobs:
            # One batch: every job is asked, or none. A job that ends meanwhile ignores its request.
            await state.bus.publish_batch([ev.JobCancelRequested(job_id=j) for j in open_jobs])
        return wf.WorkflowCancelResponse(workflow_id=str(workflow_id), cancel_requested=[str(j) for j in open_jobs])

    return routes
