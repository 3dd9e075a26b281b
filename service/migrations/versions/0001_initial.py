"""The schema of the single-node release (SQLite only, no migrations then).

Idempotent: a store made by that release already has these tables (maybe without the
columns added later by hand-rolled ALTERs); an empty database gets them created.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite needs INTEGER for an autoincrementing rowid; PostgreSQL gets 64-bit ids.
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    tables = set(inspector.get_table_names())
    if "batches" not in tables:
        op.create_table(
            "batches",
            sa.Column("id", BIGID, primary_key=True, autoincrement=True),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("mode", sa.Text, nullable=False),
            sa.Column("job_id", sa.Text),
            sa.Column("source", sa.Text, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.CheckConstraint("mode IN ('append', 'replace')", name="batches_mode"),
            sqlite_autoincrement=True,
        )
    if "examples" not in tables:
        op.create_table(
            "examples",
            sa.Column("id", BIGID, primary_key=True, autoincrement=True),
            sa.Column("batch_id", BIGID, sa.ForeignKey("batches.id"), nullable=False),
            sa.Column("text", sa.Text, nullable=False),
            sa.Column("label", sa.Text, nullable=False),
            sa.Column("prediction_id", sa.Text),
            sqlite_autoincrement=True,
        )
        op.create_index("examples_batch", "examples", ["batch_id"])
    elif "prediction_id" not in {c["name"] for c in inspector.get_columns("examples")}:
        op.add_column("examples", sa.Column("prediction_id", sa.Text))
    if "jobs" not in tables:
        op.create_table(
            "jobs",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("state", sa.Text, nullable=False),
            sa.Column("request", sa.Text, nullable=False),
            sa.Column("batch_id", BIGID),
            sa.Column("phase", sa.Text, nullable=False, server_default="queued"),
            sa.Column("fraction", sa.Float, nullable=False, server_default="0"),
            sa.Column("message", sa.Text, nullable=False, server_default=""),
            sa.Column("result", sa.Text),
            sa.Column("error", sa.Text),
            sa.Column("pid", sa.Integer),
            sa.Column("cancel_requested", sa.Integer, nullable=False, server_default="0"),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("started_at", sa.Float),
            sa.Column("finished_at", sa.Float),
            sa.Column("source", sa.Text, nullable=False, server_default="http"),
        )
        op.create_index("jobs_model_state", "jobs", ["model", "state"])
    elif "source" not in {c["name"] for c in inspector.get_columns("jobs")}:
        op.add_column("jobs", sa.Column("source", sa.Text, nullable=False, server_default="http"))
    if "traffic" not in tables:
        op.create_table(
            "traffic",
            sa.Column("model", sa.Text, primary_key=True),
            sa.Column("version", sa.Text, primary_key=True),
            sa.Column("label", sa.Text, primary_key=True),
            sa.Column("count", sa.BigInteger, nullable=False),
            sa.Column("confidence_sum", sa.Float, nullable=False),
        )
    if "uncertain" not in tables:
        op.create_table(
            "uncertain",
            sa.Column("id", BIGID, primary_key=True, autoincrement=True),
            sa.Column("model", sa.Text, nullable=False),
            sa.Column("version", sa.Text, nullable=False),
            sa.Column("label", sa.Text, nullable=False),
            sa.Column("score", sa.Float, nullable=False),
            sa.Column("text_sha256", sa.Text, nullable=False),
            sa.Column("text", sa.Text),
            sa.Column("created_at", sa.Float, nullable=False),
            sqlite_autoincrement=True,
        )


def downgrade() -> None:
    for table in ("uncertain", "traffic", "jobs", "examples", "batches"):
        op.drop_table(table)
