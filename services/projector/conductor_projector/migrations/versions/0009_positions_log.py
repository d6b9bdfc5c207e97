"""The log a read model's position counts in: its stream's creation time. A stream deleted and made
again starts its sequences over, and a position of the old log must not be taken for one of the new
(the read models are then made again from the new log). NULL: not known yet (written at the next start).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("projector_positions", sa.Column("log", sa.Text))


def downgrade() -> None:
    op.drop_column("projector_positions", "log")
