"""The database behind the store: one SQLAlchemy engine per URL, versioned migrations.

`sqlite:///<file>` (one node, the default) and `postgresql://user:pass@host:port/db` (a
fleet) are the two supported dialects. SQLAlchemy 2 Core, not an ORM: the store's SQL is
small and explicit, and Core gives both dialects, a connection pool with pre-ping (so a
restarted PostgreSQL is reconnected to by itself) and `FOR UPDATE SKIP LOCKED` where the
dialect has it. Alembic owns the schema (`service/migrations/`).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK_ID = 0x5EF17  # advisory lock held while migrating (PostgreSQL)


def normalize_url(url: str | Path) -> URL:
    """A path is a SQLite file; `postgresql://` uses psycopg 3."""
    if isinstance(url, Path):
        return URL.create("sqlite", database=str(url))
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(
            f"REFIT_DATABASE_URL: unsupported database {parsed.get_backend_name()!r};"
            " use sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB"
        )
    return parsed


def display(url: URL) -> str:
    """The URL without its password, for messages and logs."""
    return url.render_as_string(hide_password=True)


def make_engine(url: str | Path, *, busy_timeout_s: float = 30.0) -> Engine:
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            parsed, connect_args={"timeout": busy_timeout_s, "isolation_level": None}
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=FULL")
            dbapi_conn.execute("PRAGMA foreign_keys=ON")

        @sa.event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            # pysqlite's own transaction handling is off (isolation_level=None): writers take
            # the lock up front so that read-then-write transactions cannot interleave.
            immediate = conn.get_execution_options().get("write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return sa.create_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        pool_timeout=busy_timeout_s,
        # a stopped database answers at once (refused) or within this many seconds
        connect_args={"connect_timeout": 3, "application_name": "refit"},
    )


def _config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    config = _config(None)
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Migrate to `revision`; returns (before, after). Safe to run from many processes at
    once: PostgreSQL serialises them on an advisory lock, SQLite on its write lock."""
    from alembic import command

    with engine.connect().execution_options(write=True) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        from alembic.runtime.migration import MigrationContext

        before = MigrationContext.configure(conn).get_current_revision()
        command.upgrade(_config(conn), revision)
        after = MigrationContext.configure(conn).get_current_revision()
    return before, after or "base"
