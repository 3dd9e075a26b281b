"""Scale-out: aliases with compare-and-set, per-model locks, workers and job leases.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("worker", sa.Text))
    op.add_column("jobs", sa.Column("heartbeat_at", sa.Float))
    op.add_column("jobs", sa.Column("attempt", sa.Integer, nullable=False, server_default="1"))
    op.create_index("jobs_state_created", "jobs", ["state", "created_at"])
    op.create_table(
        "aliases",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("production", sa.Text),
        sa.Column("previous", sa.Text),
        sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table("model_locks", sa.Column("model", sa.Text, primary_key=True))
    op.create_table(
        "workers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("job_id", sa.Text),
        sa.Column("state", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_table("model_locks")
    op.drop_table("aliases")
    op.drop_index("jobs_state_created", "jobs")
    for column in ("attempt", "heartbeat_at", "worker"):
        op.drop_column("jobs", column)
