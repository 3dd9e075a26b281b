"""Served predictions (a bounded window) that feedback can link to by prediction id.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("seq", BIGID, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("examples_prediction", "examples", ["prediction_id"])


def downgrade() -> None:
    op.drop_index("examples_prediction", "examples")
    op.drop_table("predictions")
