"""Read models: jobs, nodes, and the projector's position.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("partition", sa.Text, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("reason_detail", sa.Text),
        sa.Column("exit_code", sa.Integer),
        sa.Column("node", sa.Text),
        sa.Column("cores", sa.JSON),
        sa.Column("pid", sa.Integer),
        sa.Column("cpus", sa.Integer, nullable=False),
        sa.Column("ntasks_per_node", sa.Integer, nullable=False),
        sa.Column("cpus_per_task", sa.Integer, nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("time_limit_s", sa.Integer),
        sa.Column("working_directory", sa.Text, nullable=False),
        sa.Column("standard_output", sa.Text, nullable=False),
        sa.Column("standard_error", sa.Text),
        sa.Column("environment", sa.JSON, nullable=False),
        sa.Column("script", sa.Text, nullable=False),
        sa.Column("submit_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True)),
        sa.Column("end_time", sa.DateTime(timezone=True)),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("message", sa.Text),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_account", "jobs", ["account"])
    op.create_index("ix_jobs_name", "jobs", ["name"])
    op.create_table(
        "nodes",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("cpus", sa.Integer, nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("partitions", sa.JSON, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "projector_positions",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("projector_positions")
    op.drop_table("nodes")
    op.drop_table("jobs")
