"""OpenTelemetry traces across the services, carried in the W3C ``traceparent`` header of the events.

A trace begins at the HTTP submit (the gateway's span); every event about that job carries a
``traceparent``: the gateway's JobSubmitted, the scheduler's decisions about the job (its placement
span, a child of the submission), the executor's JobStarted and outcome (its start and outcome spans,
children of the placement). Each service reads the header of the message it acts on and continues
that trace.

Tracing is on only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is
set: then spans go out over OTLP/HTTP in batches from a background thread, sampled as the standard
``OTEL_TRACES_SAMPLER`` says (by default parent-based, always on: the services follow the gateway's
decision). Otherwise no provider is installed and every helper here returns at once: a service that
does not trace passes the ``traceparent`` it was given on unchanged, so that a trace still joins up
across it.

The pure cores (the scheduler's fold and policy) never see OpenTelemetry: they get the header as a
plain string.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

TRACEPARENT = "traceparent"
# Span attributes.
JOB_ID = "conductor.job_id"
RUN = "conductor.run"
NODE = "conductor.node"

# A valid version-00 traceparent: anything else in a header is not carried on (it may come from
# anyone who can publish on the stream, and the executor writes it to disk next to its events).
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_PROPAGATOR = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()
_enabled = False

Attributes = Mapping[str, str | int | float | bool]


def endpoint_configured(environ: Mapping[str, str] = os.environ) -> bool:
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup(service: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Trace as ``conductor-<service>`` if an OTLP endpoint is configured; whether it does."""
    if not endpoint_configured(environ):
        return False
    # Imported only here: a service that does not trace does not load the exporter (nor protobuf).
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Our name wins over OTEL_SERVICE_NAME: `conductor up` gives every service the same environment.
    # OTEL_RESOURCE_ATTRIBUTES still adds its own (service.namespace, deployment.environment...).
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: f"conductor-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use(provider)
    return True


def use(provider: TracerProvider | None) -> None:
    """Make spans with ``provider`` (None: stop tracing). Not the global provider of OpenTelemetry,
    which can be set only once per process: the tests swap theirs in and out."""
    global _provider, _tracer, _enabled
    _provider = provider
    _tracer = trace.NoOpTracer() if provider is None else provider.get_tracer("conductor")
    _enabled = provider is not None


def enabled() -> bool:
    return _enabled


def valid(traceparent: str | None) -> str | None:
    """``traceparent`` if it is a well-formed W3C traceparent, else None."""
    return traceparent if traceparent is not None and _TRACEPARENT.fullmatch(traceparent) else None


def of_headers(headers: Mapping[str, str] | None) -> str | None:
    """The valid traceparent of a message's headers, or None."""
    return valid(headers.get(TRACEPARENT)) if headers else None


def of_request(headers: Mapping[str, str]) -> str | None:
    """The traceparent an HTTP client sent, to continue its trace; None when not tracing (the
    client's trace does not go on through services that take no part in it)."""
    return of_headers(headers) if _enabled else None


def headers(traceparent: str | None) -> dict[str, str]:
    """The headers that carry ``traceparent`` (none for None)."""
    return {TRACEPARENT: traceparent} if traceparent else {}


@contextmanager
def span(
    name: str,
    parent: str | None = None,
    attributes: Attributes | None = None,
    *,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    start_time_s: float | None = None,
) -> Iterator[str | None]:
    """A span, current inside the block, child of ``parent`` (a traceparent; None: a new trace).
    Yields the traceparent that events published inside the block carry: this span's, or, when not
    tracing, ``parent`` itself (passed through). ``start_time_s``: when it began (a Unix time)."""
    if not _enabled:
        yield parent
        return
    context = _PROPAGATOR.extract({TRACEPARENT: parent}) if parent else Context()
    start = None if start_time_s is None else int(start_time_s * 1e9)
    with _tracer.start_as_current_span(name, context, kind, attributes, start_time=start) as current:
        yield _traceparent_of(current)


def annotate(**attributes: str | int | float | bool) -> None:
    """Attributes on the current span (known only once it runs: a job id from the publish's ack)."""
    if _enabled:
        trace.get_current_span().set_attributes(attributes)


def _traceparent_of(current: trace.Span) -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(current))
    return carrier.get(TRACEPARENT)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the active span, or None: for the logs (one context lookup
    when nothing traces)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def shutdown() -> None:
    """Send what is still batched (the SDK also does so at exit) and stop tracing."""
    provider = _provider
    use(None)
    if provider is not None:
        provider.shutdown()
