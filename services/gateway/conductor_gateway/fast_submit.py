"""``POST /jobs/submit`` without FastAPI's layers, for a request that is valid as it stands.

A submit went through about a dozen ASGI layers, FastAPI's dependency solving, a ``json.loads``, a
validation of the resulting dicts and a second one of the answer: more than half of the gateway's
CPU per submit, which bounds intake. This middleware reads the body, validates it with the same
model straight from the JSON bytes (pydantic's parser), and calls the same ``accept`` as the route.

Only success is decided here. Whatever this path would refuse (a body that does not validate, a
missing or other Content-Type, a malformed or repeated Idempotency-Key) is handed to FastAPI with the
body it sent, so every error answer is FastAPI's own, word for word. What ``accept`` raises is
answered by the app's exception handlers, as the route's would be.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, HTTPException
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conductor_contracts import api

PATH = "/jobs/submit"
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # the route's Header pattern

Accept = Callable[[api.SubmitRequest, str | None, Request], Awaitable[api.SubmitResponse]]


def _content_type_is_json(value: bytes) -> bool:
    return value.split(b";", 1)[0].strip().lower() == b"application/json"


class FastSubmit:
    def __init__(self, app: ASGIApp, fastapi: FastAPI, accept: Accept) -> None:
        self.app = app
        self.fastapi = fastapi  # its exception handlers, and the route that names the request in metrics
        self.accept = accept
        self.route: BaseRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        json_body, content_type_seen, key, one_key = False, False, None, True
        for name, value in scope["headers"]:
            if name == b"content-type" and not content_type_seen:  # the first, as Starlette reads it
                json_body, content_type_seen = _content_type_is_json(value), True
            elif name == b"idempotency-key":
                one_key, key = key is None, value.decode("latin-1")
        chunks: list[bytes] = []
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client left before its body was in: nobody to answer
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except HTTPException as err:  # the body's limits (413, 408), raised from BodyLimit's receive
            await self._answer_error(err, scope, receive, send)
            return
        body = b"".join(chunks)
        valid_headers = json_body and one_key and (key is None or IDEMPOTENCY_KEY.fullmatch(key) is not None)
        request = _submit_request(body) if valid_headers else None
        if request is None:
            await self.app(scope, _replay(body, receive), send)
            return
        scope["route"] = self._submit_route()
        try:
            answer = await self.accept(request, key, Request(scope))
        except Exception as err:
            await self._answer_error(err, scope, receive, send)
            return
        await Response(answer.model_dump_json(), media_type="application/json")(scope, receive, send)

    def _submit_route(self) -> BaseRoute | None:
        if self.route is None:
            self.route = next(
                (r for r in self.fastapi.router.routes if getattr(r, "path", None) == PATH),
                None,
            )
        return self.route

    async def _answer_error(self, err: Exception, scope: Scope, receive: Receive, send: Send) -> None:
        """What the app's handler for ``err`` answers (the route's exceptions are answered by the
        same); one without a handler is a bug, answered by the app's handler of ``Exception``."""
        handlers = self.fastapi.exception_handlers
        handler = next((handlers[c] for c in type(err).__mro__ if c in handlers), None)
        if handler is None:
            raise err
        response = handler(Request(scope, receive), err)
        if inspect.isawaitable(response):  # a handler may be sync (Starlette runs it in a thread)
            response = await response
        await response(scope, receive, send)


def _submit_request(body: bytes) -> api.SubmitRequest | None:
    try:
        return api.SubmitRequest.model_validate_json(body)
    except ValidationError:
        return None  # FastAPI says what is wrong


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app, with the body that was already read from the client."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
