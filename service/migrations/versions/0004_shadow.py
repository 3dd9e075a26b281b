"""Shadow scoring: a `shadow` alias, the shadow's answer beside each sampled prediction,
and the last shadow decision.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("aliases", sa.Column("shadow", sa.Text))
    op.add_column("aliases", sa.Column("shadow_decision", sa.Text))
    op.add_column("predictions", sa.Column("shadow_version", sa.Text))
    op.add_column("predictions", sa.Column("shadow_label", sa.Text))
    op.add_column("predictions", sa.Column("shadow_score", sa.Float))


def downgrade() -> None:
    for column in ("shadow_score", "shadow_label", "shadow_version"):
        op.drop_column("predictions", column)
    op.drop_column("aliases", "shadow_decision")
    op.drop_column("aliases", "shadow")
