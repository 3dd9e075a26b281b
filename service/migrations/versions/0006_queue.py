"""The labeling queue (service/stores/queue.py).

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "queue",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("text_sha256", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),  # traffic | pool
        sa.Column("prediction_id", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.Column("version", sa.Text),  # the version that scored it (NULL: not yet)
        sa.Column("label", sa.Text),
        sa.Column("score", sa.Float),
        sa.Column("margin", sa.Float),
        sa.Column("entropy", sa.Float),
        sa.Column("embedding", sa.LargeBinary),  # float16 pooled sentence embedding
        sa.Column("out_of_scope", sa.Integer, nullable=False, server_default="0"),
        sa.Column("disagree", sa.Integer, nullable=False, server_default="0"),
        sa.Column("state", sa.Text, nullable=False, server_default="open"),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_token", sa.Text),
        sa.Column("lease_until", sa.Float),
        sa.Column("answer", sa.Text),
        sa.Column("answered_at", sa.Float),
        sa.Column("answered_by", sa.Text),
        sa.Column("batch_id", BIGID),
        sa.UniqueConstraint("model", "text_sha256", name="queue_model_text"),
        sqlite_autoincrement=True,
    )
    op.create_index("queue_model_state", "queue", ["model", "state"])


def downgrade() -> None:
    op.drop_index("queue_model_state", "queue")
    op.drop_table("queue")
