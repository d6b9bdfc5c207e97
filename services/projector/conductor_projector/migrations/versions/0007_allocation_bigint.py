"""A node's allocated CPUs and memory as BIGINT: they are sums of placements, each of which fits an
INTEGER (a job's memory is stored clamped to one), and a sum over INTEGER could overflow in one
order of the events and not in another (a batch nets a placement and an end out before adding them),
which made the read model depend on how the log was cut into batches.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for column in ("cpus_alloc", "memory_alloc_mb"):
        op.alter_column("nodes", column, type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)


def downgrade() -> None:
    for column in ("cpus_alloc", "memory_alloc_mb"):
        op.alter_column("nodes", column, type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
