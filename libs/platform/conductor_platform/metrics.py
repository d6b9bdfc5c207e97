"""Prometheus metrics of one service process, served on ``CONDUCTOR_METRICS_PORT``."""

from __future__ import annotations

import errno
import logging
import os
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

log = logging.getLogger("conductor.metrics")


class MetricsPortError(SystemExit):
    """The port cannot be served: a one-line message and exit code 1, never a traceback."""


def default_host() -> str:
    # The scheduler, executor and projector listen on nothing else, so they have no host setting of
    # their own; they follow the gateway's CONDUCTOR_HOST, which the image sets to 0.0.0.0 so that
    # pods can be scraped, and stay on the loopback interface otherwise.
    return os.environ.get("CONDUCTOR_HOST") or "127.0.0.1"


def serve(service: str, port: int | None, host: str | None = None) -> WSGIServer | None:
    """Serve the default registry at /metrics (any path, in fact) from a daemon thread, so the event
    loop is never held up by a scrape. Nothing when ``port`` is None. The server lives as long as
    the process; it is returned for tests to shut down."""
    if port is None:
        return None
    host = host or default_host()
    try:
        server, _ = start_http_server(port, addr=host)
    except OSError as err:
        why = "is in use" if err.errno == errno.EADDRINUSE else f"cannot be served: {err.strerror or err}"
        raise MetricsPortError(
            f"conductor {service}: metrics port {port} on {host} {why} (set CONDUCTOR_METRICS_PORT to another; "
            f"under conductor up, CONDUCTOR_{service.upper()}_METRICS_PORT)"
        ) from None
    log.info("metrics at http://%s/metrics", _address(host, port), extra={"metrics_port": port})
    return server


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
