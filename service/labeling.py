"""The labeling queue's logic: what goes in (served texts worth a label, uploaded pools),
scoring by the version that serves the model now, ranking by the model's query strategy
(service/ranking.py), and answers checked like feedback. The state is
`store.queue` (service/stores/queue.py); the HTTP surface is service/routes/labeling.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from models import RegistryError
from models.multilabel import LabelList, MultiDataset, stored_labels
from service import intake
from service.dataplane import shadow_answer
from service.errors import BadRequest, Conflict, NotFound, retry_later
from service.pool import ModelLoadError, UnknownModel
from service.ranking import rank, uncertainty
from service.stores.queue import Answer, QueueError

if TYPE_CHECKING:
    from service.context import Context
    from service.loading import LoadedModel

CHUNK = 256  # texts scored per graph run while refreshing the queue


def flush_inputs(ctx: Context, inputs: list[tuple[str, dict[str, Any]]]) -> None:
    """Queue the served texts a worker collected (each model's retention applied), and
    delete the items past their retention."""
    now = time.time()
    by_model: dict[str, list[dict[str, Any]]] = {}
    for name, item in inputs:
        by_model.setdefault(name, []).append(item)
    for name, items in by_model.items():
        until = now + ctx.settings_for(name).queue_retention_s
        ctx.store.queue.add(
            name, [{**item, "source": "traffic", "expires_at": until} for item in items], now=now
        )
    ctx.store.queue.purge(now)


def score_rows(model: LoadedModel, rows: list[tuple[int, str]]) -> list[dict[str, Any]]:
    """Queue scores of `(id, text)` rows by `model`: its answer, top score, margin and
    entropy uncertainty, and the pooled embedding (float16 bytes) for diverse batches."""
    scored, pooled = model.score_and_embed([text for _, text in rows])
    probs = scored.probabilities
    margin = uncertainty(probs, "margin", model.thresholds)
    entropy = uncertainty(probs, "entropy", model.thresholds)
    return [
        {
            "id": item,
            "version": model.version,
            "label": shadow_answer(model, scored, k),
            "score": round(float(probs[k].max()), 6),
            "margin": float(margin[k]),
            "entropy": float(entropy[k]),
            "embedding": pooled[k].astype(np.float16).tobytes() if pooled is not None else None,
            "out_of_scope": bool(scored.out_of_scope[k]),
        }
        for k, (item, _) in enumerate(rows)
    ]


async def refresh(ctx: Context, name: str, *, budget_s: float) -> LoadedModel:
    """The model serving `name`, after (re)scoring the open items it has not scored yet,
    for at most about `budget_s` (the rest on the next call or the background poll)."""
    try:
        entry = await ctx.pool.acquire(name)
    except UnknownModel:
        raise NotFound(
            f"model {name!r} has no production version to rank its queue with",
            fix="train one: POST /retrain/submit with model=" + name,
        ) from None
    except (ModelLoadError, RegistryError) as exc:
        raise retry_later(str(exc), fix="retry later") from None
    try:
        model = entry.holder.model
        if model is None:
            raise retry_later(f"model {name!r} is not loaded yet", fix="retry in a few seconds")
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            rows = await asyncio.to_thread(ctx.store.queue.stale, name, model.version, CHUNK)
            if not rows:
                break
            scores = await asyncio.to_thread(score_rows, model, rows)
            await asyncio.to_thread(ctx.store.queue.set_scores, scores)
    finally:
        ctx.pool.release(entry)
    return model


def ranked(
    ctx: Context, name: str, model: LoadedModel, count: int, *, owner: str | None = None
) -> tuple[str, list[int]]:
    """The strategy and the ids of the `count` open items worth a label first."""
    strategy = ctx.settings_for(name).query_strategy
    diverse = strategy == "diverse"
    rows = ctx.store.queue.candidates(
        name, model.version, now=time.time(), owner=owner, embeddings=diverse
    )
    if not rows:
        return strategy, []
    column = 2 if strategy == "entropy" else 1
    scores = np.asarray([r[column] for r in rows], dtype=np.float64)
    first = np.asarray([bool(r[3] or r[4]) for r in rows])
    vectors = None
    if diverse and all(r[5] is not None for r in rows):
        vectors = np.stack([np.frombuffer(r[5], dtype=np.float16) for r in rows])
    order = rank(scores, count, diverse=diverse, embeddings=vectors, first=first)
    return strategy, [int(rows[i][0]) for i in order]


def known_labels(ctx: Context, name: str) -> tuple[set[str], str | None]:
    """The model's classes (stored examples and production) and its kind."""
    stored = ctx.store.examples.dataset(name)
    labels = stored_labels(stored)
    kind = intake.stored_kind(stored)
    with contextlib.suppress(LookupError, RegistryError):
        meta = ctx.registry.get(name, ctx.registry.resolve(name, "production")).metadata
        labels |= set(meta.labels)
        kind = kind or meta.task
    labels.add(ctx.settings_for(name).out_of_scope_label)
    return labels, kind


def check_answers(ctx: Context, name: str, answers: list[Any]) -> list[Answer]:
    """Each answer as stored (a label, an encoded label set, or None for a skip); 400 for a
    label the model does not have unless the answer says `new_label: true`."""
    known, kind = known_labels(ctx, name)
    texts = {
        item["id"]: item["text"] for item in ctx.store.queue.items(name, [a.id for a in answers])
    }
    out: list[Answer] = []
    sent: set[str] = set()
    for i, a in enumerate(answers):
        if a.skip:
            out.append(Answer(a.id, None))
            continue
        if a.id not in texts:
            raise NotFound(
                f"no item {a.id} in the queue of {name!r}",
                fix=f"list items: GET /models/{name}/queue",
            )
        target = LabelList(a.labels) if a.labels is not None else a.label
        dataset = intake.validate([(texts[a.id], target)])
        intake.check_kind(name, dataset, kind, "its stored examples or production version")
        if isinstance(dataset, MultiDataset):
            labels, stored = set(dataset.classes), dataset.pairs()[0][1]
        else:
            labels, stored = {dataset.labels[0]}, dataset.labels[0]
        new = sorted(labels - known)
        if new and not a.new_label:
            raise BadRequest(
                f"answers[{i}]: {', '.join(map(repr, new))} is not a label of model {name!r}",
                fix="pick one of its labels, or send `new_label: true` to create a class",
            )
        sent |= labels
        out.append(Answer(a.id, stored))
    intake.check_labels(known | sent, ctx.settings, trainable=False)
    return out


def as_api_error(exc: QueueError) -> Exception:
    return (NotFound if exc.status == 404 else Conflict)(str(exc), fix=exc.fix)
