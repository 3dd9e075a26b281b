"""The labeling queue: texts worth a label per model, each scored by a version, leased to
one annotator at a time, and answered (feedback, in the same transaction), skipped or
expired. Ranking is service/labeling.py's; this is only the state."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from service.stores.db import Database
from service.stores.examples import add_batch, consumed_batch, pending
from service.stores.schema import ANSWERED, OPEN, SKIPPED, batches, examples, queue

PUBLIC = (
    "id",
    "text",
    "source",
    "prediction_id",
    "created_at",
    "expires_at",
    "version",
    "label",
    "score",
    "out_of_scope",
    "disagree",
    "state",
    "lease_owner",
    "lease_until",
    "answer",
    "answered_by",
)


class QueueError(Exception):
    """Why an answer or undo cannot be applied: `status` 404 (no such item) or 409."""

    def __init__(self, status: int, message: str, fix: str) -> None:
        super().__init__(message)
        self.status, self.fix = status, fix


@dataclass(frozen=True)
class Answer:
    item: int
    label: str | None  # the stored label (a multi-label set encoded); None: skipped


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class QueueStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, model: str, items: Sequence[dict[str, Any]], *, now: float | None = None) -> int:
        """Queue `{text, source, prediction_id?, expires_at?, out_of_scope?, disagree?}`
        items; a text already queued for the model (any state) stays one item. Returns how
        many are new."""
        now = time.time() if now is None else now
        rows: dict[str, dict[str, Any]] = {}
        for item in items:
            digest = sha256(item["text"])
            rows.setdefault(
                digest,
                {
                    "model": model,
                    "text": item["text"],
                    "text_sha256": digest,
                    "source": item["source"],
                    "prediction_id": item.get("prediction_id"),
                    "created_at": now,
                    "expires_at": item.get("expires_at"),
                    "out_of_scope": int(bool(item.get("out_of_scope"))),
                    "disagree": int(bool(item.get("disagree"))),
                },
            )
        if not rows:
            return 0
        with self.db.tx() as db:
            known = set()
            digests = list(rows)
            for start in range(0, len(digests), 500):
                known |= set(
                    db.execute(
                        sa.select(queue.c.text_sha256).where(
                            queue.c.model == model,
                            queue.c.text_sha256.in_(digests[start : start + 500]),
                        )
                    ).scalars()
                )
            fresh = [row for digest, row in rows.items() if digest not in known]
            if fresh:
                db.execute(
                    sa.text(
                        "INSERT INTO queue (model, text, text_sha256, source, prediction_id,"
                        " created_at, expires_at, out_of_scope, disagree, state) VALUES (:model,"
                        " :text, :text_sha256, :source, :prediction_id, :created_at, :expires_at,"
                        " :out_of_scope, :disagree, 'open')"
                        " ON CONFLICT (model, text_sha256) DO NOTHING"
                    ),
                    fresh,
                )
        return len(fresh)

    def stale(self, model: str, version: str, limit: int) -> list[tuple[int, str]]:
        """Open items not scored by `version`: `(id, text)`, oldest first."""
        with self.db.read() as db:
            rows = db.execute(
                sa.select(queue.c.id, queue.c.text)
                .where(
                    queue.c.model == model,
                    queue.c.state == OPEN,
                    sa.or_(queue.c.version.is_(None), queue.c.version != version),
                )
                .order_by(queue.c.id)
                .limit(limit)
            ).all()
        return [(int(r[0]), r[1]) for r in rows]

    def set_scores(self, rows: Sequence[dict[str, Any]]) -> None:
        """`{id, version, label, score, margin, entropy, embedding, out_of_scope}` per item."""
        if not rows:
            return
        with self.db.tx() as db:
            db.execute(
                sa.update(queue)
                .where(queue.c.id == sa.bindparam("item"))
                .values(
                    version=sa.bindparam("b_version"),
                    label=sa.bindparam("b_label"),
                    score=sa.bindparam("b_score"),
                    margin=sa.bindparam("b_margin"),
                    entropy=sa.bindparam("b_entropy"),
                    embedding=sa.bindparam("b_embedding"),
                    out_of_scope=sa.bindparam("b_oos"),
                ),
                [
                    {
                        "item": r["id"],
                        **{f"b_{k}": r[k] for k in ("version", "label", "score", "margin")},
                        "b_entropy": r["entropy"],
                        "b_embedding": r["embedding"],
                        "b_oos": int(bool(r["out_of_scope"])),
                    }
                    for r in rows
                ],
            )

    def candidates(
        self, model: str, version: str, *, now: float, owner: str | None = None, embeddings: bool
    ) -> list[sa.Row]:
        """Open items scored by `version`, not leased to someone else: the rows to rank."""
        columns = [queue.c.id, queue.c.margin, queue.c.entropy, queue.c.out_of_scope]
        columns += [queue.c.disagree] + ([queue.c.embedding] if embeddings else [])
        free = sa.or_(queue.c.lease_until.is_(None), queue.c.lease_until < now)
        if owner is not None:
            free = sa.or_(free, queue.c.lease_owner == owner)
        with self.db.read() as db:
            return list(
                db.execute(
                    sa.select(*columns).where(
                        queue.c.model == model,
                        queue.c.state == OPEN,
                        queue.c.version == version,
                        free,
                    )
                ).all()
            )

    def items(self, model: str, ids: Sequence[int]) -> list[dict[str, Any]]:
        """The public view of `ids`, in that order."""
        if not ids:
            return []
        with self.db.read() as db:
            rows = db.execute(
                sa.select(*(queue.c[c] for c in PUBLIC)).where(
                    queue.c.model == model, queue.c.id.in_(list(ids))
                )
            ).mappings()
            found = {int(r["id"]): _public(r) for r in rows}
        return [found[i] for i in ids if i in found]

    def lease(
        self, model: str, ids: Sequence[int], owner: str, *, seconds: float, limit: int
    ) -> tuple[str, list[int]]:
        """Lease up to `limit` of `ids` (in order) to `owner`, one compare-and-set per item:
        two annotators never hold the same item. Returns the lease token and the ids."""
        token, now = uuid.uuid4().hex, time.time()
        leased: list[int] = []
        with self.db.tx() as db:
            for item in ids:
                if len(leased) >= limit:
                    break
                won = db.execute(
                    sa.update(queue)
                    .where(
                        queue.c.id == item,
                        queue.c.model == model,
                        queue.c.state == OPEN,
                        sa.or_(
                            queue.c.lease_until.is_(None),
                            queue.c.lease_until < now,
                            queue.c.lease_owner == owner,
                        ),
                    )
                    .values(lease_owner=owner, lease_token=token, lease_until=now + seconds)
                ).rowcount
                if won:
                    leased.append(item)
        return token, leased

    def answer(
        self,
        model: str,
        answers: Sequence[Answer],
        *,
        annotator: str,
        token: str | None,
        now: float | None = None,
    ) -> int:
        """Answer (or skip) items in one transaction: each answer becomes a feedback example
        linked to the item's prediction id. QueueError (nothing written) when an item does
        not exist, is no longer open, or is leased to someone else. Returns the pending
        feedback count."""
        now = time.time() if now is None else now
        with self.db.tx() as db:
            for a in answers:
                row = _locked(db, model, a.item)
                if row.state != OPEN:
                    raise QueueError(
                        409,
                        f"item {a.item} was already {row.state} by {row.answered_by or 'someone'}",
                        f"take the next item: POST /models/{model}/queue/next",
                    )
                held = row.lease_until is not None and row.lease_until >= now
                if held and row.lease_token != token:
                    raise QueueError(
                        409,
                        f"item {a.item} is leased to {row.lease_owner} until {row.lease_until:.0f}",
                        "answer the items your lease holds, or take new ones with"
                        f" POST /models/{model}/queue/next",
                    )
                batch = None
                if a.label is not None:
                    batch = add_batch(
                        db, model, [(row.text, a.label, row.prediction_id)], "append", "feedback"
                    )
                db.execute(
                    sa.update(queue)
                    .where(queue.c.id == a.item)
                    .values(
                        state=ANSWERED if a.label is not None else SKIPPED,
                        answer=a.label,
                        answered_at=now,
                        answered_by=annotator,
                        batch_id=batch,
                        lease_owner=None,
                        lease_token=None,
                        lease_until=None,
                    )
                )
            return pending(db, model)

    def undo(self, model: str, item: int, owner: str, *, seconds: float) -> tuple[str, int]:
        """Reopen an answered or skipped item (its feedback removed, unless a retrain has
        used it already) and lease it back to `owner`. Returns the token and pending count."""
        token, now = uuid.uuid4().hex, time.time()
        with self.db.tx() as db:
            row = _locked(db, model, item)
            if row.state == OPEN:
                raise QueueError(409, f"item {item} is not answered", "nothing to undo")
            if row.batch_id is not None:
                used = db.execute(sa.select(consumed_batch(model))).scalar_one()
                if int(row.batch_id) <= int(used):
                    raise QueueError(
                        409,
                        f"the answer to item {item} was trained on already",
                        "send the right label with POST /feedback (the latest label wins)",
                    )
                db.execute(sa.delete(examples).where(examples.c.batch_id == row.batch_id))
                db.execute(sa.delete(batches).where(batches.c.id == row.batch_id))
            db.execute(
                sa.update(queue)
                .where(queue.c.id == item)
                .values(
                    state=OPEN,
                    answer=None,
                    answered_at=None,
                    answered_by=None,
                    batch_id=None,
                    lease_owner=owner,
                    lease_token=token,
                    lease_until=now + seconds,
                )
            )
            return token, pending(db, model)

    def purge(self, now: float | None = None) -> int:
        """Delete the items past their retention (served texts are personal data)."""
        now = time.time() if now is None else now
        with self.db.tx() as db:
            return int(
                db.execute(
                    sa.delete(queue).where(
                        queue.c.expires_at.is_not(None), queue.c.expires_at < now
                    )
                ).rowcount
            )

    def counts(self, model: str, version: str | None, *, now: float) -> dict[str, int]:
        """Items per state, with the open ones split into leased and not yet scored."""
        with self.db.read() as db:
            rows = db.execute(
                sa.select(
                    queue.c.state,
                    sa.func.count(),
                    sa.func.sum(sa.case((queue.c.lease_until >= now, 1), else_=0)),
                    sa.func.sum(
                        sa.case(
                            (sa.or_(queue.c.version.is_(None), queue.c.version != version), 1),
                            else_=0,
                        )
                    ),
                )
                .where(queue.c.model == model)
                .group_by(queue.c.state)
            ).all()
        out = {OPEN: 0, ANSWERED: 0, SKIPPED: 0, "leased": 0, "unscored": 0}
        for state, n, leased, unscored in rows:
            out[state] = int(n)
            if state == OPEN:
                out["leased"], out["unscored"] = int(leased or 0), int(unscored or 0)
        return out

    def answered_per_day(self, model: str) -> list[dict[str, Any]]:
        """Labels collected through the queue per UTC day (the console's history plot)."""
        with self.db.read() as db:
            rows = db.execute(
                sa.select(queue.c.answered_at).where(
                    queue.c.model == model, queue.c.state == ANSWERED
                )
            ).scalars()
            days: dict[int, int] = {}
            for at in rows:
                day = int(at // 86_400) * 86_400
                days[day] = days.get(day, 0) + 1
        return [{"day": d, "answered": n} for d, n in sorted(days.items())]


def _locked(db: sa.Connection, model: str, item: int) -> Any:
    row = db.execute(
        sa.select(queue).where(queue.c.id == item, queue.c.model == model).with_for_update()
    ).first()
    if row is None:
        raise QueueError(
            404,
            f"no item {item} in the queue of {model!r}",
            f"list items: GET /models/{model}/queue",
        )
    return row


def _public(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["out_of_scope"], out["disagree"] = bool(out["out_of_scope"]), bool(out["disagree"])
    return out
