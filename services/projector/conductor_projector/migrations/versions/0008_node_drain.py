"""A node's drain, kept apart from its state: a drained node that is lost is DOWN, and DRAIN again
(not UP) once it registers; a lost node resumed stays DOWN until it registers. NULL: not drained;
the drain's reason otherwise ('' when none was given).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("drain", sa.Text))
    op.execute("UPDATE nodes SET drain = coalesce(reason, '') WHERE state = 'DRAIN'")


def downgrade() -> None:
    op.drop_column("nodes", "drain")
