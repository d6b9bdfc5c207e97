"""``python -m conductor_gateway``"""

from __future__ import annotations

import signal

# Ctrl-C while the imports below run (about a second) ends the process quietly, not with a
# KeyboardInterrupt traceback; Python's own handler is back before the service starts.
signal.signal(signal.SIGINT, signal.SIG_DFL)

import contextlib
import errno
import gc
import socket
import sys

import uvicorn

from conductor_gateway.app import create_app
from conductor_gateway.http_protocol import bounded_head
from conductor_gateway.settings import GatewaySettings
from conductor_platform import closed, metrics, tracing
from conductor_platform import logging as logs
from conductor_platform.settings import load_settings


def listening_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """The gateway's socket. With ``reuse_port`` (SO_REUSEPORT) several gateway processes listen on
    the same port and the kernel spreads new connections over them: one process is one core's worth
    of intake, and they share nothing but NATS and PostgreSQL."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> None:
    settings = load_settings(GatewaySettings, "conductor gateway")
    logs.setup("gateway", settings.log_level)
    tracing.setup("gateway")
    metrics.serve("gateway", settings.metrics_port, settings.host)
    # uvloop and httptools, named rather than left to uvicorn's "auto": without them a submit costs
    # about a third more CPU (the asyncio loop's writes, h11's pure-Python parsing), and a missing
    # one should fail at start, not halve intake quietly.
    lost: list[closed.ConnectionClosedForGood] = []

    def closed_for_good(err: closed.ConnectionClosedForGood) -> None:
        # uvicorn's own graceful stop, as on SIGTERM: the requests in flight are answered (a 503 for
        # those that needed NATS), then the lifespan ends, then the process, below.
        lost.append(err)
        server.should_exit = True

    config = uvicorn.Config(
        create_app(settings, on_closed_for_good=closed_for_good, stopping=lambda: server.should_exit),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=bounded_head(settings.body_timeout_s),
        log_config=None,
        access_log=False,
    )
    try:
        sock = listening_socket(settings.host, settings.port, settings.reuse_port)
    except OSError as err:
        why = "is in use" if err.errno == errno.EADDRINUSE else f"cannot be served: {err.strerror or err}"
        sys.exit(f"conductor gateway: port {settings.port} on {settings.host} {why} (set CONDUCTOR_PORT to another)")
    server = uvicorn.Server(config)
    # What start-up made (modules, FastAPI's routes and models: ~120k objects) lives as long as the
    # process: out of the collector's sight, a full collection no longer walks it (~50-100 ms here,
    # a pause that every request in flight would wait out).
    gc.collect()
    gc.freeze()
    # uvicorn hands a captured SIGINT back to Python once it has stopped, as uvicorn.run() does and
    # catches: Ctrl-C is a stop, not a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE, as uvicorn.run() exits: the lifespan failed
    if lost:  # said when it happened (closed.report): a supervisor starts the gateway again
        sys.exit(closed.EXIT_CODE)


if __name__ == "__main__":
    main()
