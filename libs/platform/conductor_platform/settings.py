"""Configuration from the environment (``CONDUCTOR_*``, ``NATS_URL``, ``DATABASE_URL``)."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

S = TypeVar("S", bound=BaseSettings)


# sysexits' EX_CONFIG, how a service tells its supervisor that starting it again cannot help:
# `conductor up` then stops, instead of restarting it with back-off for as long as it runs.
EXIT_BAD_SETTING = os.EX_CONFIG


def load_settings(cls: type[S], program: str, **overrides: Any) -> S:
    """``cls`` from the environment (and ``overrides``); a value that does not hold ends the process
    with what is wrong, by setting, and no traceback (exit code ``EXIT_BAD_SETTING``)."""
    try:
        return cls(**overrides)
    except ValidationError as err:
        print(f"{program}: {_told(err, cls)}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTING)
    except SettingsError as err:
        # A list or object setting that is not JSON (CONDUCTOR_PARTITIONS=default).
        cause = f" ({err.__cause__})" if err.__cause__ is not None else ""
        print(f'{program}: {err}{cause} (a list is JSON, like ["a", "b"])', file=sys.stderr)
        sys.exit(EXIT_BAD_SETTING)


def _told(err: ValidationError, cls: type[BaseSettings]) -> str:
    """Each error by the variable that sets it, without the values given: pydantic's own text quoted
    every setting for an error of the whole (DATABASE_URL and its password included)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    lines = []
    for error in err.errors(include_input=False, include_url=False):
        field = ".".join(str(part) for part in error.get("loc", ()))
        name = field if not field or field.isupper() else f"{prefix}{field}".upper()
        lines.append(f"{name}: {error.get('msg', '')}" if name else str(error.get("msg", "")))
    return "; ".join(lines)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _servers(value: str) -> str:
    # nats-py given no server ("", ",", " ") spun in its connect at a full core, deaf to SIGTERM.
    servers = [server.strip() for server in value.split(",") if server.strip()]
    if not servers:
        raise ValueError("names no server: give one or more nats:// URLs, comma-separated")
    return ",".join(servers)


def _level_name(value: str) -> str:
    if value.upper() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)} (any case)")
    return value.upper()


class CommonSettings(BaseSettings):
    # No setting is a duration or a size that infinity or NaN could mean (inf heartbeats crashed the
    # executor in its fence's arithmetic, and conductor up restarted it for ever).
    model_config = SettingsConfigDict(env_prefix="CONDUCTOR_", extra="ignore", allow_inf_nan=False)

    nats_url: Annotated[str, AfterValidator(_servers)] = Field(
        default="nats://127.0.0.1:4222", validation_alias=AliasChoices("NATS_URL", "CONDUCTOR_NATS_URL")
    )
    database_url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/conductor",
        validation_alias=AliasChoices("DATABASE_URL", "CONDUCTOR_DATABASE_URL"),
    )
    # Python's level names, any case: "LOUD" used to pass here and crash every service at its first
    # line of logging, which `conductor up` restarted for ever.
    log_level: Annotated[str, AfterValidator(_level_name)] = "INFO"
    # Copies JetStream keeps of the log, the lease and the outputs: 1 on one nats-server (conductor up),
    # 3 on a three-node cluster (the Helm chart), so losing one NATS pod loses nothing.
    stream_replicas: int = Field(default=1, ge=1, le=5)
    # Pacing of every retry against NATS or PostgreSQL: doubling from the first wait to the longest,
    # then every retry_max_s for as long as the server is away.
    retry_first_s: float = Field(default=0.2, gt=0)
    retry_max_s: float = Field(default=5.0, gt=0)
    # CONDUCTOR_METRICS_PORT: serve Prometheus metrics at /metrics on this port (None: not served;
    # the gateway has them on its HTTP port as well).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Node liveness: each executor writes its heartbeat every heartbeat_s; the scheduler declares a
    # node lost (NodeLost) after node_lost_after_s without one (Slurm's SlurmdTimeout), and an
    # executor that could not write one for that long stops the jobs that would be requeued.
    heartbeat_s: float = Field(default=2.0, ge=0.1, le=3600)  # 0.001: 461 writes a second
    node_lost_after_s: float = Field(default=30.0, gt=0)
    # CONDUCTOR_ARCHIVE_DIR: where `conductor compact` moves the log's oldest events; a reader that
    # replays a compacted log from the start (a scheduler without a snapshot, a rebuild) reads it there.
    archive_dir: str = "var/archive"


def async_database_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs too: the services talk to Postgres through asyncpg."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url
