"""When a job was placed (its current run's placement), for the placed -> started latency.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("placed_time", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("jobs", "placed_time")
