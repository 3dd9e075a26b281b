"""Canary traffic: a `canary` alias beside production and the last canary decision.

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("aliases", sa.Column("canary", sa.Text))
    op.add_column("aliases", sa.Column("canary_decision", sa.Text))


def downgrade() -> None:
    op.drop_column("aliases", "canary_decision")
    op.drop_column("aliases", "canary")
