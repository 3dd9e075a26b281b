"""Per-model overrides of the policy thresholds, promotion tolerance and triggers.

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_settings",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("settings", sa.Text, nullable=False),  # JSON: only the overridden keys
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_settings")
