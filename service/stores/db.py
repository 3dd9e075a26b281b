"""One engine, shared by every domain store: short transactions, and one translation of a
database that is away or stays locked into `StoreUnavailable`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from service.database import display, make_engine, normalize_url, upgrade
from service.stores.schema import model_locks


class StoreUnavailable(Exception):
    """The database could not be reached, or stayed locked: nothing was stored."""


class Database:
    def __init__(self, url: str | Path, *, busy_timeout_s: float = 30.0, migrate: bool = True):
        self.url = normalize_url(url)
        self.busy_timeout_s = busy_timeout_s
        self.sqlite = self.url.get_backend_name() == "sqlite"
        self.name = Path(self.url.database or "").name if self.sqlite else display(self.url)
        self.engine = make_engine(self.url, busy_timeout_s=busy_timeout_s)
        if migrate:
            with self.guard():
                upgrade(self.engine)

    @contextmanager
    def guard(self) -> Iterator[None]:
        try:
            yield
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
            text = str(getattr(exc, "orig", None) or exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            if self.sqlite and ("locked" in text or "busy" in text):
                raise StoreUnavailable(
                    f"the job store {self.name} stayed locked by another writer for"
                    f" {self.busy_timeout_s:g} s ({first}); nothing was stored, retry later"
                ) from exc
            raise StoreUnavailable(
                f"the store {self.name} is unavailable ({first}); nothing was stored, retry later"
            ) from exc

    @contextmanager
    def tx(self) -> Iterator[sa.Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE)."""
        with (
            self.guard(),
            self.engine.connect().execution_options(write=True) as db,
            db.begin(),
        ):
            yield db

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        with self.guard(), self.engine.connect() as db:
            yield db


def lock_model(db: sa.Connection, model: str) -> None:
    """Serialise read-then-write transactions about one model across processes (PostgreSQL:
    the row's lock; SQLite's BEGIN IMMEDIATE already serialises writers)."""
    db.execute(
        sa.text("INSERT INTO model_locks (model) VALUES (:m) ON CONFLICT (model) DO NOTHING"),
        {"m": model},
    )
    db.execute(sa.select(model_locks.c.model).where(model_locks.c.model == model).with_for_update())
