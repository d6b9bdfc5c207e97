"""Requeue: a job's wish and its count of restarts; a node's reason (drained, lost).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("requeue", sa.Boolean, nullable=False, server_default="false"))
    op.add_column("jobs", sa.Column("restarts", sa.Integer, nullable=False, server_default="0"))
    op.add_column("nodes", sa.Column("reason", sa.Text))


def downgrade() -> None:
    op.drop_column("nodes", "reason")
    op.drop_column("jobs", "restarts")
    op.drop_column("jobs", "requeue")
