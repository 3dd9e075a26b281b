"""The database schema, once: every table the stores query, as one SQLAlchemy `MetaData`.

Alembic's migrations (service/migrations/) build exactly this (a test runs autogenerate's
compare against a freshly migrated SQLite and PostgreSQL database and expects no
difference): change both together, in a new migration.
"""

from __future__ import annotations

import sqlalchemy as sa

# Job states, defined here only: the stores' queries and the runners use these names.
QUEUED, RUNNING = "queued", "running"
SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = "succeeded", "failed", "cancelled", "interrupted"
ACTIVE_STATES = (QUEUED, RUNNING)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
metadata = sa.MetaData()

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", BIGID, primary_key=True, autoincrement=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("mode", sa.Text, nullable=False),
    sa.Column("job_id", sa.Text),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.CheckConstraint("mode IN ('append', 'replace')", name="batches_mode"),
    sqlite_autoincrement=True,
)
examples = sa.Table(
    "examples",
    metadata,
    sa.Column("id", BIGID, primary_key=True, autoincrement=True),
    sa.Column("batch_id", BIGID, sa.ForeignKey("batches.id"), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("prediction_id", sa.Text),
    sa.Index("examples_batch", "batch_id"),
    sa.Index("examples_prediction", "prediction_id"),
    sqlite_autoincrement=True,
)
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("request", sa.Text, nullable=False),
    sa.Column("batch_id", BIGID),
    sa.Column("phase", sa.Text, nullable=False, server_default=QUEUED),
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
    sa.Column("worker", sa.Text),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
    sa.Index("jobs_model_state", "model", "state"),
    sa.Index("jobs_state_created", "state", "created_at"),
)
traffic = sa.Table(
    "traffic",
    metadata,
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("version", sa.Text, primary_key=True),
    sa.Column("label", sa.Text, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("confidence_sum", sa.Float, nullable=False),
)
uncertain = sa.Table(
    "uncertain",
    metadata,
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
aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("production", sa.Text),
    sa.Column("previous", sa.Text),
    sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("shadow", sa.Text),
    sa.Column("shadow_decision", sa.Text),
    sa.Column("canary", sa.Text),
    sa.Column("canary_decision", sa.Text),
)
model_locks = sa.Table("model_locks", metadata, sa.Column("model", sa.Text, primary_key=True))
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("job_id", sa.Text),
    sa.Column("state", sa.Text, nullable=False),
)
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("seq", BIGID, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("shadow_version", sa.Text),
    sa.Column("shadow_label", sa.Text),
    sa.Column("shadow_score", sa.Float),
    sqlite_autoincrement=True,
)
model_settings = sa.Table(
    "model_settings",
    metadata,
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("settings", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
# The labeling queue: texts worth a label (served traffic when the model's store_texts is
# on, uploaded unlabeled pools), scored by a version, leased to one annotator at a time.
OPEN, ANSWERED, SKIPPED = "open", "answered", "skipped"
queue = sa.Table(
    "queue",
    metadata,
    sa.Column("id", BIGID, primary_key=True, autoincrement=True),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("text_sha256", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("prediction_id", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("version", sa.Text),
    sa.Column("label", sa.Text),
    sa.Column("score", sa.Float),
    sa.Column("margin", sa.Float),
    sa.Column("entropy", sa.Float),
    sa.Column("embedding", sa.LargeBinary),
    sa.Column("out_of_scope", sa.Integer, nullable=False, server_default="0"),
    sa.Column("disagree", sa.Integer, nullable=False, server_default="0"),
    sa.Column("state", sa.Text, nullable=False, server_default=OPEN),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_token", sa.Text),
    sa.Column("lease_until", sa.Float),
    sa.Column("answer", sa.Text),
    sa.Column("answered_at", sa.Float),
    sa.Column("answered_by", sa.Text),
    sa.Column("batch_id", BIGID),
    sa.UniqueConstraint("model", "text_sha256", name="queue_model_text"),
    sa.Index("queue_model_state", "model", "state"),
    sqlite_autoincrement=True,
)
