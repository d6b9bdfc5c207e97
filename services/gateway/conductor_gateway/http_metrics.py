"""HTTP requests by route, method and status, with their durations: a pure ASGI middleware (it wraps
``send`` to see the status; nothing is buffered, so a streamed answer such as /events is counted
when it ends)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("conductor_http_requests", "HTTP requests the gateway answered", ["route", "method", "status"])
DURATION = Histogram(
    "conductor_http_request_duration_seconds",
    "Time to answer an HTTP request (a stream: until it ends)",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)


def _route(app: ASGIApp, scope: Scope) -> str:
    """The route's path template (``/jobs/query/{job_id}``): bounded, unlike the paths clients send."""
    # The router leaves the route it chose in the scope: no second matching of every route's
    # pattern on each request (it was a few percent of a submit's CPU).
    chosen = scope.get("route")
    if chosen is not None and chosen.matches(scope)[0] is Match.FULL:
        return str(getattr(chosen, "path", "other"))
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "other"))
    return "unmatched"


class HttpMetrics:
    def __init__(self, app: ASGIApp, routes_of: ASGIApp) -> None:
        self.app = app
        self.routes_of = routes_of  # the FastAPI app, whose routes name the request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what a client sees when the app fails before it answers

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route, method = _route(self.routes_of, scope), scope.get("method", "")
            REQUESTS.labels(route, method, str(status)).inc()
            DURATION.labels(route, method).observe(time.perf_counter() - started)
