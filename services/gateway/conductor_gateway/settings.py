from __future__ import annotations

from pydantic import Field

from conductor_platform.settings import CommonSettings


class GatewaySettings(CommonSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # CONDUCTOR_REUSE_PORT: listen with SO_REUSEPORT, so that several gateway processes share the port
    # (``conductor up --gateways N`` sets it). Off by default: a second gateway started by mistake on a
    # port in use then fails at once instead of taking half the connections.
    reuse_port: bool = False
    # Below NATS's 1 MiB message limit, with room for the job's other fields.
    max_script_bytes: int = Field(default=512 * 1024, ge=1, le=900 * 1024)
    # A request body must be complete within this (CONDUCTOR_BODY_TIMEOUT_S), or it is a 408.
    body_timeout_s: float = Field(default=30.0, gt=0)
    page_size: int = Field(default=50, ge=1, le=500)  # the listings take at most 500 per page
    # CONDUCTOR_DATABASE_TIMEOUT_S: the most a query waits on PostgreSQL (to connect, for a pooled
    # connection, for a statement) before it is a 503: one that hangs answers nothing (database.py).
    database_timeout_s: float = Field(default=5.0, gt=0, le=3600)
    max_output_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    # CONDUCTOR_LOCAL_OUTPUT: serve a running job's live output from its file when this gateway can
    # see it (``conductor up``: the same machine). Off where gateways share no files with the nodes
    # (Kubernetes): output then comes only from the object store, once a job ends.
    local_output: bool = True
    # GET /events (the live feed). A comment line every events_heartbeat_s keeps proxies from cutting
    # an idle stream.
    events_heartbeat_s: float = Field(default=15.0, ge=0.1, le=3600)  # 1e-6 flooded a quiet feed
    # Events held per client between the log and its connection (and as many read ahead from the
    # log): the bound of a client's memory in the gateway.
    events_buffer: int = Field(default=128, ge=1, le=10_000)
    # A client whose buffer stays full this long is too slow: it is told so and disconnected, and
    # resumes with Last-Event-ID.
    events_stall_s: float = Field(default=30.0, gt=0)
    # Jobs whose account and workflow the gateway remembers for the feed (read from their JobSubmitted).
    events_job_cache: int = Field(default=10_000, ge=1)
    # Feeds open at once on this gateway; one more is a 503. Each holds a consumer on the log's stream,
    # whose limit (10,000) it shares with every executor and service: gateways x this must stay below it.
    events_max_clients: int = Field(default=256, ge=1)
