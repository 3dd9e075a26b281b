"""The one inference path, protocol-independent: `/predict` (BentoML's api and the fast
path) and V2 `infer` both check texts, infer and count here; each only shapes its answer.
Shadow scoring, drift counts and uncertain inputs ride along on each model's production
requests.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from models import InvalidModelNameError, RegistryUnavailable, validate_model_name
from models._inference import Scored, top_labels
from models.multilabel import NO_LABEL, encode_label_set
from models.text import FIXES, invalid_character
from service import canary, metrics
from service.errors import (
    ApiError,
    BadRequest,
    NotFound,
    TooLarge,
    Unavailable,
    invalid_name,
    retry_later,
)
from service.loading import LoadedModel
from service.pool import ModelLoadError, UnknownModel
from service.responses import JSONResponse

if TYPE_CHECKING:
    from service.context import Challenger, Context

log = logging.getLogger(__name__)


class DataPlane:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self._counters: dict[tuple[str, str], Any] = {}

    async def classify(
        self,
        texts: list[str],
        top_k: int,
        model: str | None = None,
        version: str | None = None,
        route_key: str | None = None,
    ) -> JSONResponse:
        """`/predict` after its body parsed: reached through BentoML's api, or straight from
        `PredictFastPath` for well-formed bodies (the same code either way)."""
        entered = time.perf_counter()
        name = model or self.settings.model_name
        try:
            if not self.ctx.is_default(name):
                check_name(name)
            self.check(texts, top_k)
            served, scored, production, seconds = await self.infer(texts, name, version, route_key)
        except ApiError as refused:
            return refused.response()
        return self._answer(texts, top_k, served, scored, seconds, entered, production=production)

    def check(self, texts: list[str], top_k: int) -> None:
        """The request's texts and top_k within the limits, or an ApiError saying what is not."""
        limits = self.settings
        if not texts:
            raise BadRequest("texts must not be empty", fix='send {"texts": ["some text"]}')
        if len(texts) > limits.max_texts_per_request:
            raise TooLarge(
                f"{len(texts)} texts in one request, the limit is {limits.max_texts_per_request}",
                fix="split the request or raise REFIT_MAX_TEXTS_PER_REQUEST",
            )
        for i, text in enumerate(texts):
            if len(text) > limits.max_text_chars:
                raise TooLarge(
                    f"texts[{i}] has {len(text)} characters, the limit is {limits.max_text_chars}",
                    fix="trim it or raise REFIT_MAX_TEXT_CHARS",
                )
            if not text.strip():
                raise BadRequest(f"texts[{i}] is empty", fix="send non-blank texts")
            if (bad := invalid_character(text)) is not None:
                kind, where = bad
                raise BadRequest(f"texts[{i}] contains {kind} {where}", fix=FIXES[kind])
        if not 1 <= top_k <= limits.max_top_k:
            raise BadRequest(f"top_k must be between 1 and {limits.max_top_k}, got {top_k}")

    async def infer(
        self, texts: list[str], name: str, version: str | None, route_key: str | None = None
    ) -> tuple[LoadedModel, Scored, bool, float]:
        """Scores from the model serving `name` (its production, its canary for the callers
        routed there, or `version`): the default model's own holder and batcher, any other
        from the pool (loaded on demand). Returns (model, probabilities and out-of-scope
        flags, whether production answered, seconds)."""
        ctx = self.ctx
        slot = ctx.canaries.get(name) if version is None else None
        if slot is not None and slot.holder.model is not None:
            fraction = ctx.cached_settings(name).canary_fraction
            if canary.routed(name, route_key, fraction):
                answered = await self._canary(slot, name, texts)
                if answered is not None:
                    return answered
            started = time.perf_counter()
            try:
                served, scored, production, seconds = await self._production(texts, name)
            except Exception:
                seconds = time.perf_counter() - started
                canary.record(ctx, name, "production", seconds, False)
                raise
            canary.record(ctx, name, "production", seconds, True)
            return served, scored, production, seconds
        if version is None:
            return await self._production(texts, name)
        return await self._pooled(texts, name, version)

    async def _canary(
        self, slot: Challenger, name: str, texts: list[str]
    ) -> tuple[LoadedModel, Scored, bool, float] | None:
        """The canary's answer, or None when it failed (production answers instead)."""
        started = time.perf_counter()
        slot.busy += len(texts)
        try:
            served, scored = await slot.batcher.submit(texts)
        except Exception as exc:
            seconds = time.perf_counter() - started
            version = slot.holder.model.version if slot.holder.model else "unloaded"
            canary.record(self.ctx, name, "canary", seconds, False)
            log.warning("canary %s/%s failed, production answers: %s", name, version, exc)
            return None
        finally:
            slot.busy -= len(texts)
        seconds = time.perf_counter() - started
        canary.record(self.ctx, name, "canary", seconds, True)
        return served, scored, False, seconds

    async def _production(
        self, texts: list[str], name: str
    ) -> tuple[LoadedModel, Scored, bool, float]:
        ctx = self.ctx
        if ctx.is_default(name):
            # No registry check here: the watcher swaps models off the event loop (loading
            # and hashing a version takes ~0.3 s that would stall every request of this worker).
            if ctx.holder.model is None:
                raise Unavailable(
                    ctx.holder.error or "no model loaded yet",
                    fix="train one: POST /retrain/submit",
                )
            started = time.perf_counter()
            served, scored = await ctx.batcher.submit(texts)
            return served, scored, True, time.perf_counter() - started
        return await self._pooled(texts, name, None)

    async def _pooled(
        self, texts: list[str], name: str, version: str | None
    ) -> tuple[LoadedModel, Scored, bool, float]:
        ctx = self.ctx
        try:
            entry = await ctx.pool.acquire(name, version)
        except UnknownModel as exc:
            raise NotFound(
                str(exc), fix="list models with GET /models; train one: POST /retrain/submit"
            ) from None
        except (ModelLoadError, RegistryUnavailable) as exc:
            raise retry_later(str(exc), fix="retry later") from None
        try:
            started = time.perf_counter()
            served, scored = await entry.batcher.submit(texts)
        finally:
            ctx.pool.release(entry)
        return served, scored, version is None, time.perf_counter() - started

    def counter(self, model: LoadedModel, label: str) -> Any:
        """`refit_predictions_total` for this version and label (a cached child: labels()
        costs a lock and a dict lookup per text otherwise)."""
        key = (model.version, label)
        child = self._counters.get(key)
        if child is None:
            if len(self._counters) > 10_000:
                self._counters.clear()
            child = self._counters[key] = metrics.PREDICTIONS.labels(model.name, *key)
        return child

    def _answer(
        self,
        texts: list[str],
        top_k: int,
        model: LoadedModel,
        scored: Scored,
        seconds: float,
        entered: float,
        *,
        production: bool,
    ) -> JSONResponse:
        """The JSON answer, counters, and (a model's production) drift and shadow bookkeeping."""
        ctx = self.ctx
        k = min(top_k, len(model.labels))
        probs = scored.probabilities
        top = top_labels(probs, k)
        predictions = []
        now = time.time()
        request_id = os.urandom(8).hex()
        keep_ids = self.settings.prediction_window > 0 and len(ctx.served_ids) < 50_000
        shadow = ctx.shadows.get(model.name) if production else None
        shadowed = shadow is not None and self._shadow_sample(shadow, model.name, len(texts))
        served_rows = ctx.served_ids if not shadowed else []
        rows = zip(texts, probs, top, scored.out_of_scope.tolist(), strict=True)
        for i, (text, row, order, outside) in enumerate(rows):
            prediction_id = f"{request_id}.{i}"
            ranked = [
                {"label": model.labels[int(j)], "score": round(float(row[j]), 6)} for j in order
            ]
            score = float(row[order[0]])
            if scored.chosen is not None:  # multi-label: every label above its threshold
                chosen = _chosen(model, row, scored.chosen[i])
                answer = multi_answer(model, chosen)
                traffic_key = chosen[0]["label"] if chosen else NO_LABEL
                for label in answer_labels(model, scored, i):
                    self.counter(model, label).inc()
                prediction: dict[str, Any] = {
                    "id": prediction_id,
                    "labels": chosen,
                    "out_of_scope": outside,
                    "top": ranked,
                }
            else:
                # out of scope: the model's out-of-scope label; `top` ranks the known labels
                answer = model.out_of_scope_label if outside else model.labels[int(order[0])]
                traffic_key = answer
                self.counter(model, answer).inc()
                prediction = {
                    "id": prediction_id,
                    "label": answer,
                    "out_of_scope": outside,
                    "score": round(score, 6),
                    "top": ranked,
                }
            if keep_ids or shadowed:
                served_rows.append(
                    (prediction_id, model.name, model.version, answer, round(score, 6), now)
                )
            if production:  # drift and uncertain inputs: a model's production traffic
                key = (model.name, model.version, traffic_key)
                seen = ctx.traffic.setdefault(key, [0, 0.0])
                seen[0] += 1
                seen[1] += score
            worth_a_label = outside or score < self.settings.uncertain_below
            if production and worth_a_label and len(ctx.uncertain) < 1000:
                row = (model.name, model.version, traffic_key, round(score, 6), text, now)
                ctx.uncertain.append(row)
            if worth_a_label and len(ctx.queue_inputs) < 1000 and ctx.stores_texts(model.name):
                item = {"text": text, "prediction_id": prediction_id, "out_of_scope": outside}
                ctx.queue_inputs.append((model.name, item))
            predictions.append(prediction)
        if shadowed:
            ctx.spawn(self._shadow_score(shadow, texts, served_rows, seconds, keep_ids))
        if self.settings.log_texts:
            log.info(
                "predict %r -> %s",
                texts,
                [
                    p["label"] if "label" in p else [x["label"] for x in p["labels"]]
                    for p in predictions
                ],
            )
        _request_series(model.name, model.version).observe(time.perf_counter() - entered)
        return JSONResponse(
            {"model": model.name, "version": model.version, "predictions": predictions},
            headers={
                "X-Model-Version": model.version,
                "X-Refit-Worker": str(os.getpid()),
                "X-Request-Id": request_id,
            },
        )

    # -- shadow scoring -------------------------------------------------------------------
    def _shadow_sample(self, slot: Challenger, name: str, n: int) -> bool:
        """Whether the model's shadow also scores this request: a loaded shadow, the sampled
        share, and room in its queue (a busy shadow skips rather than slow production down)."""
        if slot.holder.model is None or random.random() >= self.settings.shadow_fraction:
            return False
        if slot.busy + n > self.settings.max_batch_texts:
            metrics.SHADOW_SKIPPED.labels(name).inc()
            return False
        slot.busy += n
        return True

    async def _shadow_score(
        self,
        slot: Challenger,
        texts: list[str],
        rows: list[tuple[Any, ...]],
        production_s: float,
        keep: bool,
    ) -> None:
        """Score a request production already answered; record the shadow's labels beside
        production's (what feedback is later compared with)."""
        ctx = self.ctx
        started = time.perf_counter()
        try:
            shadow, shadow_scored = await slot.batcher.submit(texts)
        except Exception as exc:  # unloaded meanwhile, or failed: production is unaffected
            log.debug("shadow scoring skipped: %s", exc)
            shadow = None
        finally:
            slot.busy -= len(texts)
        if shadow is None:
            if keep:
                ctx.served_ids.extend(rows)
            return
        seconds = time.perf_counter() - started
        probs = shadow_scored.probabilities
        best = probs.argmax(axis=1)
        scored = [
            (*row, shadow.version, shadow_answer(shadow, shadow_scored, k), round(float(p[j]), 6))
            for k, (row, j, p) in enumerate(zip(rows, best, probs, strict=True))
        ]
        if keep:
            ctx.served_ids.extend(scored)
        if ctx.stores_texts(shadow.name):  # disagreements are worth a label
            ctx.queue_inputs.extend(
                (shadow.name, {"text": text, "prediction_id": row[0], "disagree": True})
                for text, row in zip(texts, scored, strict=True)
                if row[3] != row[7] and len(ctx.queue_inputs) < 1000
            )
        agreed = sum(row[3] == row[7] for row in scored)
        metrics.SHADOW_SCORED.labels(shadow.name, shadow.version).inc(len(scored))
        metrics.SHADOW_AGREED.labels(shadow.name, shadow.version).inc(agreed)
        metrics.SHADOW_LATENCY.labels(shadow.name, "production").observe(production_s)
        metrics.SHADOW_LATENCY.labels(shadow.name, "shadow").observe(seconds)
        slot.latency.append((production_s, seconds))


def shadow_answer(model: LoadedModel, scored: Scored, k: int) -> str:
    """Text `k`'s answer as stored beside production's (what feedback is compared with)."""
    if scored.chosen is not None:
        return multi_answer(model, _chosen(model, scored.probabilities[k], scored.chosen[k]))
    if scored.out_of_scope[k]:
        return model.out_of_scope_label
    return model.labels[int(scored.probabilities[k].argmax())]


def answer_labels(model: LoadedModel, scored: Scored, k: int) -> list[str]:
    """What `refit_predictions_total` counts for text `k`: its label, each chosen label of a
    multi-label answer, or the out-of-scope label (no label)."""
    if scored.chosen is not None:
        picked = [model.labels[j] for j in np.flatnonzero(scored.chosen[k])]
        return picked or [model.out_of_scope_label]
    if scored.out_of_scope[k]:
        return [model.out_of_scope_label]
    return [model.labels[int(scored.probabilities[k].argmax())]]


def _chosen(model: LoadedModel, row: np.ndarray, chosen: np.ndarray) -> list[dict[str, Any]]:
    """A multi-label answer: the labels at or above their thresholds, most probable first."""
    picked = sorted(np.flatnonzero(chosen).tolist(), key=lambda j: -row[j])
    return [{"label": model.labels[j], "score": round(float(row[j]), 6)} for j in picked]


def multi_answer(model: LoadedModel, chosen: list[dict[str, Any]]) -> str:
    """A multi-label answer as one stored string (feedback's `labels` are stored the same
    way, so live accuracy and shadow judging compare whole sets: subset accuracy)."""
    return encode_label_set(item["label"] for item in chosen)


def check_name(name: str) -> None:
    try:
        validate_model_name(name)
    except InvalidModelNameError as exc:
        raise invalid_name(exc) from None


@functools.cache
def _request_series(name: str, version: str) -> Any:
    return metrics.REQUEST_LATENCY.labels(name, version)
