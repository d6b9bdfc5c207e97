"""The read models: plain tables the gateway queries with SQL. Dropped and rebuilt from the log at will.

Schema changes go through Alembic migrations (``migrations/versions``); this module mirrors the head.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
)

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("job_id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("account", Text, nullable=False),
    Column("partition", Text, nullable=False),
    Column("state", String(32), nullable=False),
    Column("reason", Text),
    Column("reason_detail", Text),
    Column("exit_code", Integer),
    Column("node", Text),
    Column("cores", JSON),
    Column("pid", Integer),
    Column("cpus", Integer, nullable=False),
    Column("ntasks_per_node", Integer, nullable=False),
    Column("cpus_per_task", Integer, nullable=False),
    Column("memory_mb", Integer, nullable=False),
    Column("time_limit_s", Integer),
    Column("working_directory", Text, nullable=False),
    Column("standard_output", Text, nullable=False),
    Column("standard_error", Text),
    Column("environment", JSON, nullable=False),
    Column("script", Text, nullable=False),
    Column("submit_time", DateTime(timezone=True), nullable=False),
    Column("placed_time", DateTime(timezone=True)),
    Column("start_time", DateTime(timezone=True)),
    Column("end_time", DateTime(timezone=True)),
    Column("cancel_requested", Boolean, nullable=False, server_default="false"),
    Column("message", Text),
    Column("workflow_id", Text),
    Column("workflow_index", Integer),
    Column("branch_id", Text),
    Column("job_type", Text),
    Column("parents", JSON),  # job ids
    Column("dependency", Text),  # sbatch's syntax
    Column("requeue", Boolean, nullable=False, server_default="false"),
    Column("restarts", Integer, nullable=False, server_default="0"),  # its current run
    Index("ix_jobs_state", "state"),
    Index("ix_jobs_workflow_id", "workflow_id"),
    Index("ix_jobs_account", "account"),
    Index("ix_jobs_name", "name"),
)

users = Table(
    "users",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("username", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_users_username", "username", unique=True),
)

# A workflow's state is not stored: it is its jobs' states, read together (queries.py).
workflows = Table(
    "workflows",
    metadata,
    Column("workflow_id", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("owner", Text, nullable=False),
    Column("name", Text, nullable=False, server_default=""),
    Column("job_count", Integer, nullable=False),
    Column("first_job_id", BigInteger, nullable=False),
    Column("submit_time", DateTime(timezone=True), nullable=False),
    Index("ix_workflows_user_id", "user_id"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("name", Text, primary_key=True),
    Column("cpus", Integer, nullable=False),
    Column("memory_mb", Integer, nullable=False),
    Column("partitions", JSON, nullable=False),
    Column("state", String(32), nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),
    # Sums of placements (each within an INTEGER): BIGINT, so that no order of events overflows them.
    Column("cpus_alloc", BigInteger, nullable=False, server_default="0"),
    Column("memory_alloc_mb", BigInteger, nullable=False, server_default="0"),
    Column("reason", Text),  # why it is DRAIN or DOWN
    # Drained (its reason, '' when none was given) or NULL: kept while the node is DOWN, so that it is
    # DRAIN again when it registers (as the scheduler has it), and a resume of a lost node leaves it DOWN.
    Column("drain", Text),
)

# The projector's position in the stream, written in the same transaction as the rows it covers.
positions = Table(
    "projector_positions",
    metadata,
    Column("name", Text, primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("log", Text),  # the log it counts in (its stream's creation time); NULL: not known yet
)

# Events a consumer could not apply (content PostgreSQL rejects, or bytes that are no event): recorded
# here, in the transaction that moves the position past them, so each is recorded once and skipped.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("consumer", Text, primary_key=True),
    Column("stream_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("subject", Text, nullable=False),
    Column("event_type", Text),
    Column("job_id", BigInteger),
    Column("error", Text, nullable=False),
    # A bounded copy of the message, escaped so that it can always be stored.
    Column("data", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_dead_letters_job_id", "job_id"),
)
