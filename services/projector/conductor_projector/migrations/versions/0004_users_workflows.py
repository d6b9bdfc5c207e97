"""Users, workflows, and what a job holds of its workflow and dependency.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("username", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_users_username", "users", ["username"], unique=True)
    op.create_table(
        "workflows",
        sa.Column("workflow_id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False, server_default=""),
        sa.Column("job_count", sa.Integer, nullable=False),
        sa.Column("first_job_id", sa.BigInteger, nullable=False),
        sa.Column("submit_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_workflows_user_id", "workflows", ["user_id"])
    op.add_column("jobs", sa.Column("workflow_id", sa.Text))
    op.add_column("jobs", sa.Column("workflow_index", sa.Integer))
    op.add_column("jobs", sa.Column("branch_id", sa.Text))
    op.add_column("jobs", sa.Column("job_type", sa.Text))
    op.add_column("jobs", sa.Column("parents", sa.JSON))
    op.add_column("jobs", sa.Column("dependency", sa.Text))
    op.create_index("ix_jobs_workflow_id", "jobs", ["workflow_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_workflow_id", table_name="jobs")
    for column in ("dependency", "parents", "job_type", "branch_id", "workflow_index", "workflow_id"):
        op.drop_column("jobs", column)
    op.drop_index("ix_workflows_user_id", table_name="workflows")
    op.drop_table("workflows")
    op.drop_index("ix_users_username", table_name="users")
    op.drop_table("users")
