"""Nodes: allocated CPUs and memory, kept by the projector from placements and outcomes.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("cpus_alloc", sa.Integer, nullable=False, server_default="0"))
    op.add_column("nodes", sa.Column("memory_alloc_mb", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("nodes", "memory_alloc_mb")
    op.drop_column("nodes", "cpus_alloc")
