"""The Refit BentoML service: batched ONNX prediction, retrain jobs, model admin, hot swap.

Run with `python -m service` (trains a first model when the registry is empty) or
`bentoml serve service.app:Refit`. Settings come from `REFIT_*` environment variables,
read once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import logging
import os
import random
import signal
import sys
import time
from collections import deque
from typing import Any, Literal

import bentoml
import numpy as np
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError

from models import (
    CorruptVersionError,
    InvalidModelNameError,
    RegistryError,
    RegistryUnavailable,
    validate_model_name,
)
from models.text import FIXES, invalid_character
from service import metrics, v2
from service.drift import drift_report
from service.middleware import (
    BoundedMetricsMiddleware,
    DeadlineMiddleware,
    ErrorShapeMiddleware,
    LimitsAndAuthMiddleware,
    PredictFastPath,
    RetrainSubmitMiddleware,
    format_errors,
)
from service.responses import JSONResponse
from service.runtime import (
    LoadedModel,
    MicroBatcher,
    ModelHolder,
    ModelLoadError,
    ModelPool,
    UnknownModel,
    release_memory,
)
from service.schemas import (
    Example,
    FeedbackRequest,
    ModelSettings,
    PredictResponse,
    PromoteRequest,
    error_responses,
)
from service.settings import Settings
from service.state import open_state
from service.store import ACTIVE_STATES, RetrainPolicy, StoreUnavailable
from service.trainer import die_with_parent, trainer_env

log = logging.getLogger("service")

# Read once at import: BentoML needs the worker count in the decorator below.
SETTINGS = Settings()
admin = FastAPI(title="Refit admin", default_response_class=JSONResponse)


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


@admin.exception_handler(RequestValidationError)
async def _invalid(request, exc: RequestValidationError) -> JSONResponse:
    errors = [  # without the offending input: it can be large, and it is the caller's own
        {k: v for k, v in e.items() if k in ("type", "loc", "msg")}
        for e in jsonable_encoder(exc.errors())
    ]
    return JSONResponse(
        {"error": f"invalid request: {format_errors(errors)}", "detail": errors}, status_code=422
    )


@admin.exception_handler(InvalidModelNameError)
async def _invalid_name(request, exc: InvalidModelNameError) -> JSONResponse:
    return error(400, f"invalid model name: {exc}")


class _Refused(Exception):
    """A prediction that cannot be served, with the answer that says why."""

    def __init__(self, status: int, message: str, headers: dict | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers, extra

    def response(self, *, bare: bool = False) -> JSONResponse:
        """`{"error", "fix"...}`, or `{"error"}` alone (the V2 protocol's shape)."""
        body = {"error": self.message, **({} if bare else self.extra)}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


@admin.exception_handler(StoreUnavailable)
@admin.exception_handler(RegistryUnavailable)
async def _unavailable(request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "5"})


def warn_if_open(settings: Settings) -> bool:
    """Log a warning when writes need no token; True when they do not."""
    if settings.api_token is not None:
        return False
    log.warning(
        "REFIT_API_TOKEN is not set: retrain, promote, rollback, cancel and retry are open to"
        " anyone who can reach %s:%d; set a token of 8+ characters to require"
        " `Authorization: Bearer <token>`",
        settings.host,
        settings.port,
    )
    return True


@bentoml.service(
    name="refit",
    workers=SETTINGS.workers,
    # BentoML's timeout keeps a timer per request — holding the request's context (spans
    # and all, ~4-10 KB) — until it expires, answered or not: an hour of that grew a worker
    # by ~0.2 MB/s under moderate load. The request deadline (DeadlineMiddleware) answers
    # first, so BentoML's only needs to be a little longer than it.
    traffic={
        "timeout": int(SETTINGS.request_timeout_s) + 5
        if SETTINGS.request_timeout_s
        else max(3600, int(SETTINGS.time_budget_s * 2))
    },
    endpoints={"livez": "/livez", "readyz": "/readyz"},
    tracing={"excluded_urls": [] if SETTINGS.trace_predict else ["/predict"]},
    logging={"access": {"enabled": SETTINGS.access_log}},
)
@bentoml.asgi_app(admin, path="/")
class Refit:
    def __init__(self) -> None:
        global _SERVING
        self.settings = SETTINGS
        self.store, self.registry = open_state(self.settings)
        self.embedded = self.settings.trainer == "embedded"
        self.holder = ModelHolder(
            self.registry,
            self.settings.model_name,
            threads=self.settings.threads,
            graph_optimization=self.settings.graph_optimization,
            device=self.settings.device,
            allow_int8=self.settings.quantize != "never",
        )
        self.batcher = MicroBatcher(
            self.holder,
            max_texts=self.settings.max_batch_texts,
            max_latency_ms=self.settings.max_latency_ms,
            on_batch=self._record_batch,
        )
        # other named models, loaded on their first request (REFIT_MAX_LOADED_MODELS)
        self.pool = ModelPool(
            self.registry,
            max_loaded=self.settings.max_loaded_models,
            load_kwargs={
                "threads": self.settings.threads,
                "graph_optimization": self.settings.graph_optimization,
                "device": self.settings.device,
                "allow_int8": self.settings.quantize != "never",
            },
            batcher_kwargs={
                "max_texts": self.settings.max_batch_texts,
                "max_latency_ms": self.settings.max_latency_ms,
                "on_batch": self._record_batch,
            },
            on_change=lambda model, event: metrics.MODEL_LOADS.labels(model, event).inc(),
        )
        self.pool.pin(self.settings.model_name, self.holder, self.batcher)
        # a challenger that passed the offline gate, scoring a sample of live traffic
        self.shadow_holder = ModelHolder(
            self.registry,
            self.settings.model_name,
            threads=1,  # leaves the other cores to production
            graph_optimization=self.settings.graph_optimization,
            device=self.settings.device,
            alias="shadow",
            allow_int8=self.settings.quantize != "never",
        )
        self.shadow_batcher = MicroBatcher(
            self.shadow_holder,
            max_texts=self.settings.max_batch_texts,
            max_latency_ms=self.settings.max_latency_ms,
        )
        self._shadow_busy = 0  # texts queued or running in the shadow batcher
        self._shadow_latency: deque[tuple[float, float]] = deque(maxlen=2000)
        self._served: LoadedModel | None = None
        self._trim_polls = 0
        self._counters: dict[tuple[str, str], Any] = {}
        self._background: set[asyncio.Task] = set()
        # live traffic, flushed to the store every REFIT_TRIGGER_POLL_S
        self._traffic: dict[tuple[str, str], list[float]] = {}
        self._uncertain: list[tuple[str, str, float, str, float]] = []
        self._served_ids: list[tuple[str, str, str, str, float, float]] = []
        self._swap(force=True)
        metrics.KEEP_VERSIONS = self._versions_to_expose
        _SERVING = self

    def _versions_to_expose(self) -> dict[str, set[str]]:
        """Per model, the versions whose metric series stay exposed: aliased or loaded here
        (every model of the registry, so named models' retired versions drop out too)."""
        entries = list(self.pool.entries.items())
        try:
            names = set(self.registry.list_models())
        except RegistryUnavailable:
            names = set()
        names |= {self.settings.model_name} | {key[0] for key, _ in entries}
        keep: dict[str, set[str]] = {}
        for name in names:
            keep[name] = set(self.registry.aliases(name).values())
        for (name, _), entry in entries:
            if entry.holder.model is not None:
                keep[name].add(entry.holder.model.version)
        if self.shadow_holder.model is not None:
            keep[self.settings.model_name].add(self.shadow_holder.model.version)
        return keep

    # -- lifecycle -------------------------------------------------------------------------
    def __is_ready__(self) -> bool:
        return self.holder.model is not None and self.holder.error is None

    @bentoml.on_deployment
    def _reconcile_jobs() -> None:  # once, before any worker starts
        settings = Settings()
        warn_if_open(settings)
        store, registry = open_state(settings)  # migrates the store once, before the workers
        if settings.trainer == "embedded":  # `refit worker`s reap their own jobs
            interrupted = store.reconcile()
            if interrupted:
                log.warning("jobs interrupted by the last shutdown: %s", ", ".join(interrupted))
        removed = registry.clean_staging(settings.model_name)
        if removed:
            log.warning("removed unfinished staging folders: %s", ", ".join(removed))

    @bentoml.on_startup
    async def _watch_registry(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.settings.swap_poll_s)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._swap)
                with contextlib.suppress(Exception):
                    self.pool.drop(await asyncio.to_thread(self.pool.refresh))

        async def triggers() -> None:
            while True:
                await asyncio.sleep(self.settings.trigger_poll_s)
                try:
                    await self._flush_and_trigger()
                except Exception:  # never let the loop die; the next poll tries again
                    log.exception("trigger check failed")

        running = asyncio.get_running_loop()
        self._watcher = running.create_task(loop())
        self._triggers = running.create_task(triggers())

    async def _flush_and_trigger(self) -> None:
        traffic, self._traffic = self._traffic, {}
        uncertain, self._uncertain = self._uncertain, []
        served, self._served_ids = self._served_ids, []
        name = self.settings.model_name
        if traffic:
            counts = {k: (int(v[0]), v[1]) for k, v in traffic.items()}
            try:
                await asyncio.to_thread(self.store.add_traffic, name, counts)
            except StoreUnavailable:  # kept for the next flush: drift counts are not lost
                for key, (n, c) in counts.items():
                    seen = self._traffic.setdefault(key, [0, 0.0])
                    seen[0] += n
                    seen[1] += c
                self._uncertain = (uncertain + self._uncertain)[:1000]
                raise
        if uncertain:
            await asyncio.to_thread(
                self.store.add_uncertain,
                name,
                uncertain,
                keep_text=self.settings.store_uncertain_texts,
            )
        if served:  # best effort: a lost flush loses links to feedback, never predictions
            try:
                await asyncio.to_thread(
                    self.store.add_predictions, served, keep=self.settings.prediction_window
                )
                live = await asyncio.to_thread(self.store.live_accuracy, name)
            except StoreUnavailable:
                live = {}
            for version, row in live.items():
                metrics.LIVE_ACCURACY.labels(name, version).set(row["accuracy"])
        with contextlib.suppress(StoreUnavailable):
            await asyncio.to_thread(self._judge_shadow)
        with contextlib.suppress(StoreUnavailable):
            await asyncio.to_thread(self._fleet_metrics)
        report = await asyncio.to_thread(self._drift)
        if report is not None and report["label_js_divergence"] is not None:
            metrics.DRIFT_JS.labels(name, report["version"]).set(report["label_js_divergence"])
        if report is not None and report["live_mean_confidence"] is not None:
            metrics.LIVE_CONFIDENCE.labels(name, report["version"]).set(
                report["live_mean_confidence"]
            )
        if not self.settings.auto_retrain:
            return
        drift = report["label_js_divergence"] if report else None
        job = await asyncio.to_thread(
            self.store.maybe_trigger,
            name,
            self._policy(name),
            drift=drift,
            owner_pid=os.getpid(),
        )
        if job is None:
            return
        metrics.AUTO_RETRAINS.labels(name, job.request["trigger"]).inc()
        log.info("job %s started by a trigger: %s", job.id, job.request["cause"])
        if not self.embedded:
            return  # a `refit worker` claims it
        task = asyncio.get_running_loop().create_task(self._run_job(job.id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _drift(self) -> dict[str, Any] | None:
        model = self.holder.model
        if model is None:
            return None
        try:
            meta = self.registry.get(model.name, model.version).metadata
        except (RegistryError, LookupError):
            return None
        counts, confidence = self.store.traffic(model.name, model.version)
        return drift_report(
            meta, counts, confidence, min_predictions=self.settings.drift_min_predictions
        )

    def _swap(self, force: bool = False) -> None:
        if self._trim_polls:  # a batch in flight during the swap may have freed the old
            self._trim_polls -= 1  # model only after the trim: trim again on later polls
            release_memory()
        try:
            self.shadow_holder.refresh()
        except Exception:  # the shadow never gets in production's way
            log.exception("shadow refresh failed")
        if not self.holder.refresh() and not force:
            return
        model = self.holder.model
        if model is None:
            return
        old = self._served
        if old is not None and old.version != model.version:
            metrics.MODEL_INFO.labels(old.name, old.version, old.strategy, old.provider).set(0)
            metrics.MODEL_MACRO_F1.labels(old.name, old.version).set(0)
            metrics.MODEL_SWAPS.labels(model.name).inc()
        metrics.MODEL_INFO.labels(model.name, model.version, model.strategy, model.provider).set(1)
        metrics.MODEL_MACRO_F1.labels(model.name, model.version).set(model.macro_f1)
        with contextlib.suppress(RegistryError, LookupError):
            conf = self.registry.get(model.name, model.version).metadata.metrics.mean_confidence
            if conf is not None:
                metrics.VALIDATION_CONFIDENCE.labels(model.name, model.version).set(conf)
        self._served = model
        if old is not None and old is not model:
            del old
            release_memory()  # the replaced session's weights, back to the OS
            self._trim_polls = 3

    def _counter(self, model: LoadedModel, label: str) -> Any:
        """`refit_predictions_total` for this version and label (a cached child: labels()
        costs a lock and a dict lookup per text otherwise)."""
        key = (model.version, label)
        child = self._counters.get(key)
        if child is None:
            if len(self._counters) > 10_000:
                self._counters.clear()
            child = self._counters[key] = metrics.PREDICTIONS.labels(model.name, *key)
        return child

    @staticmethod
    @functools.cache
    def _batch_series(name: str) -> tuple[Any, Any]:
        return metrics.INFERENCE_LATENCY.labels(name), metrics.BATCH_SIZE.labels(name)

    @staticmethod
    @functools.cache
    def _request_series(name: str, version: str) -> Any:
        return metrics.REQUEST_LATENCY.labels(name, version)

    def _record_batch(self, model: LoadedModel, size: int, seconds: float) -> None:
        latency, sizes = self._batch_series(model.name)
        latency.observe(seconds)
        sizes.observe(size)

    # -- prediction ------------------------------------------------------------------------
    @bentoml.api
    async def predict(
        self, texts: list[str], top_k: int = 1, model: str | None = None
    ) -> PredictResponse:
        """Classify texts; concurrent requests share one onnxruntime call. `model` names a
        model (default: REFIT_MODEL_NAME), loaded on its first request."""
        return await self.classify(texts, top_k, model)

    async def classify(
        self, texts: list[str], top_k: int, model: str | None = None, version: str | None = None
    ) -> JSONResponse:
        """`/predict` after its body parsed: reached through BentoML's api above, or straight
        from `PredictFastPath` for well-formed bodies (the same code either way)."""
        entered = time.perf_counter()
        name = model or self.settings.model_name
        try:
            if name != self.settings.model_name:
                self._check_name(name)
            self._check_predict(texts, top_k)
            served, probs, default, seconds = await self._infer(texts, name, version)
        except _Refused as refused:
            return refused.response()
        return self._answer(texts, top_k, served, probs, seconds, entered, default=default)

    @staticmethod
    def _check_name(name: str) -> None:
        try:
            validate_model_name(name)
        except InvalidModelNameError as exc:
            raise _Refused(400, f"invalid model name: {exc}") from None

    def _check_predict(self, texts: list[str], top_k: int) -> None:
        """The request's texts and top_k within the limits, or _Refused saying what is not."""
        limits = self.settings
        if not texts:
            raise _Refused(400, "texts must not be empty", fix='send {"texts": ["some text"]}')
        if len(texts) > limits.max_texts_per_request:
            raise _Refused(
                413,
                f"{len(texts)} texts in one request, the limit is {limits.max_texts_per_request}",
                fix="split the request or raise REFIT_MAX_TEXTS_PER_REQUEST",
            )
        for i, text in enumerate(texts):
            if len(text) > limits.max_text_chars:
                raise _Refused(
                    413,
                    f"texts[{i}] has {len(text)} characters, the limit is {limits.max_text_chars}",
                    fix="trim it or raise REFIT_MAX_TEXT_CHARS",
                )
            if not text.strip():
                raise _Refused(400, f"texts[{i}] is empty", fix="send non-blank texts")
            if (bad := invalid_character(text)) is not None:
                kind, where = bad
                raise _Refused(400, f"texts[{i}] contains {kind} {where}", fix=FIXES[kind])
        if not 1 <= top_k <= limits.max_top_k:
            raise _Refused(400, f"top_k must be between 1 and {limits.max_top_k}, got {top_k}")

    async def _infer(
        self, texts: list[str], name: str, version: str | None
    ) -> tuple[LoadedModel, np.ndarray, bool, float]:
        """Probabilities from the model serving `name` (its production, or `version`): the
        default model's own holder and batcher, any other from the pool (loaded on demand).
        Returns (model, probabilities, whether it is the default model, seconds)."""
        if name == self.settings.model_name and version is None:
            # No registry check here: the watcher swaps models off the event loop (loading
            # and hashing a version takes ~0.3 s that would stall every request of this worker).
            if self.holder.model is None:
                raise _Refused(
                    503,
                    self.holder.error or "no model loaded yet",
                    fix="train one: POST /retrain/submit",
                )
            started = time.perf_counter()
            served, probs = await self.batcher.submit(texts)
            return served, probs, True, time.perf_counter() - started
        try:
            entry = await self.pool.acquire(name, version)
        except UnknownModel as exc:
            raise _Refused(
                404, str(exc), fix="list models with GET /models; train one: POST /retrain/submit"
            ) from None
        except (ModelLoadError, RegistryUnavailable) as exc:
            raise _Refused(503, str(exc), {"Retry-After": "5"}, fix="retry later") from None
        try:
            started = time.perf_counter()
            served, probs = await entry.batcher.submit(texts)
        finally:
            self.pool.release(entry)
        return served, probs, False, time.perf_counter() - started

    def _answer(
        self,
        texts: list[str],
        top_k: int,
        model: LoadedModel,
        probs: np.ndarray,
        seconds: float,
        entered: float,
        *,
        default: bool,
    ) -> JSONResponse:
        """The JSON answer, counters, and (the default model) drift and shadow bookkeeping."""
        k = min(top_k, len(model.labels))
        top = np.argsort(-probs, axis=1)[:, :k]
        predictions = []
        now = time.time()
        request_id = os.urandom(8).hex()
        keep_ids = self.settings.prediction_window > 0 and len(self._served_ids) < 50_000
        shadowed = default and self._shadow_sample(len(texts))
        served_rows = self._served_ids if not shadowed else []
        for i, (text, row, order) in enumerate(zip(texts, probs, top, strict=True)):
            best = model.labels[int(order[0])]
            score = float(row[order[0]])
            prediction_id = f"{request_id}.{i}"
            if keep_ids or shadowed:
                served_rows.append(
                    (prediction_id, model.name, model.version, best, round(score, 6), now)
                )
            self._counter(model, best).inc()
            if default:  # drift and uncertain inputs are tracked for the default model
                seen = self._traffic.setdefault((model.version, best), [0, 0.0])
                seen[0] += 1
                seen[1] += score
            if default and score < self.settings.uncertain_below and len(self._uncertain) < 1000:
                self._uncertain.append((model.version, best, round(score, 6), text, now))
            predictions.append(
                {
                    "id": prediction_id,
                    "label": best,
                    "score": round(float(row[order[0]]), 6),
                    "top": [
                        {"label": model.labels[int(j)], "score": round(float(row[j]), 6)}
                        for j in order
                    ],
                }
            )
        if shadowed:
            task = asyncio.get_running_loop().create_task(
                self._shadow_score(texts, served_rows, seconds, keep_ids)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if self.settings.log_texts:
            log.info("predict %r -> %s", texts, [p["label"] for p in predictions])
        self._request_series(model.name, model.version).observe(time.perf_counter() - entered)
        return JSONResponse(
            {"model": model.name, "version": model.version, "predictions": predictions},
            headers={
                "X-Model-Version": model.version,
                "X-Refit-Worker": str(os.getpid()),
                "X-Request-Id": request_id,
            },
        )

    # -- shadow scoring ----------------------------------------------------------------------
    def _shadow_sample(self, n: int) -> bool:
        """Whether the shadow also scores this request: a loaded shadow, the sampled share,
        and room in its queue (a busy shadow skips rather than slow production down)."""
        if self.shadow_holder.model is None or random.random() >= self.settings.shadow_fraction:
            return False
        if self._shadow_busy + n > self.settings.max_batch_texts:
            metrics.SHADOW_SKIPPED.labels(self.settings.model_name).inc()
            return False
        self._shadow_busy += n
        return True

    async def _shadow_score(
        self, texts: list[str], rows: list[tuple[Any, ...]], production_s: float, keep: bool
    ) -> None:
        """Score a request production already answered; record the shadow's labels beside
        production's (what feedback is later compared with)."""
        started = time.perf_counter()
        try:
            shadow, probs = await self.shadow_batcher.submit(texts)
        except Exception as exc:  # unloaded meanwhile, or failed: production is unaffected
            log.debug("shadow scoring skipped: %s", exc)
            shadow = None
        finally:
            self._shadow_busy -= len(texts)
        if shadow is None:
            if keep:
                self._served_ids.extend(rows)
            return
        seconds = time.perf_counter() - started
        best = probs.argmax(axis=1)
        scored = [
            (*row, shadow.version, shadow.labels[int(j)], round(float(p[j]), 6))
            for row, j, p in zip(rows, best, probs, strict=True)
        ]
        if keep:
            self._served_ids.extend(scored)
        agreed = sum(row[3] == row[7] for row in scored)
        metrics.SHADOW_SCORED.labels(shadow.name, shadow.version).inc(len(scored))
        metrics.SHADOW_AGREED.labels(shadow.name, shadow.version).inc(agreed)
        metrics.SHADOW_LATENCY.labels(shadow.name, "production").observe(production_s)
        metrics.SHADOW_LATENCY.labels(shadow.name, "shadow").observe(seconds)
        self._shadow_latency.append((production_s, seconds))

    def _judge_shadow(self) -> dict[str, Any] | None:
        """Promote the shadow once it is not worse than production on enough linked
        feedback (`REFIT_SHADOW_MIN_LABELED`), or drop it. Every worker of every replica
        may judge; the alias compare-and-set lets exactly one decision through."""
        name = self.settings.model_name
        aliases = self.registry.aliases(name)
        production, shadow = aliases.get("production"), aliases.get("shadow")
        if not production or not shadow:
            return None
        report = self.store.shadow_report(name, production, shadow)
        if report["labeled"] < self.settings.shadow_min_labeled:
            return None
        tolerance = self._settings_for(name).promotion_tolerance
        better = report["shadow_accuracy"] >= report["production_accuracy"] - tolerance
        if self.registry.end_shadow(name, shadow, promote=better) is None:
            return None  # decided elsewhere first
        decision = {
            "version": shadow,
            "against": production,
            "outcome": "promoted" if better else "dropped",
            "reason": f"live accuracy {report['shadow_accuracy']:.4f} vs production"
            f" {report['production_accuracy']:.4f} on the same {report['labeled']} labeled"
            f" predictions (tolerance {tolerance:g})",
            "report": report,
            "at": time.time(),
        }
        self.store.record_shadow_decision(name, decision)
        metrics.SHADOW_DECISIONS.labels(name, decision["outcome"]).inc()
        log.info("shadow %s/%s %s: %s", name, shadow, decision["outcome"], decision["reason"])
        return decision

    def _shadow_view(self, aliases: dict[str, str]) -> dict[str, Any]:
        shadow, production = aliases.get("shadow"), aliases.get("production")
        lat = list(self._shadow_latency)

        def ms(values: list[float], q: float) -> float | None:
            return round(float(np.percentile(values, q)) * 1000, 2) if values else None

        prod, shad = [p for p, _ in lat], [s for _, s in lat]
        return {
            "version": shadow,
            "fraction": self.settings.shadow_fraction,
            "promote_after_labeled": self.settings.shadow_min_labeled,
            "loaded_here": (m.version if (m := self.shadow_holder.model) else None),
            "live": self.store.shadow_report(self.settings.model_name, production, shadow)
            if shadow and production
            else None,
            "latency_this_worker": {
                "samples": len(lat),
                "production_p50_ms": ms(prod, 50),
                "production_p99_ms": ms(prod, 99),
                "shadow_p50_ms": ms(shad, 50),
                "shadow_p99_ms": ms(shad, 99),
            },
            "last_decision": self.store.shadow_decision(self.settings.model_name),
        }

    # -- retraining ------------------------------------------------------------------------
    @bentoml.task
    async def retrain(
        self,
        examples: list[Example] | None = None,
        strategy: Literal["auto", "feature_extraction", "fine_tuning"] = "auto",
        mode: Literal["append", "replace"] = "append",
        promote: Literal["auto", "always", "never", "shadow"] = "auto",
        job_id: str = "",
    ) -> dict[str, Any]:
        """Retrain on stored + new examples (mode=append) or on the new ones only (replace).

        The request is validated and stored before it is queued (4xx otherwise); the job
        runs in a separate trainer process, one at a time per model, in submit order.
        Progress: `GET /jobs/{job_id}` (the id is in the `X-Refit-Job-Id` header).
        """
        job = self.store.get_job(job_id) if job_id else None
        if job is None:
            return {"error": "no such job; submit examples to POST /retrain/submit"}
        if not self.embedded:
            return await self._await_job(job.id)
        return await self._run_job(job.id)

    async def _await_job(self, job_id: str) -> dict[str, Any]:
        """REFIT_TRAINER=external: a `refit worker` runs the job; the task follows it."""
        while True:
            try:
                job = await asyncio.to_thread(self.store.get_job, job_id)
            except StoreUnavailable:
                job = None
            if job is not None and job.state not in ACTIVE_STATES:
                return job.to_dict()
            await asyncio.sleep(1.0)

    async def _run_job(self, job_id: str) -> dict[str, Any]:
        queued = self.store.get_job(job_id)
        model = queued.model if queued is not None else self.settings.model_name
        while self.store.next_in_line(model) != job_id:
            waiting = self.store.get_job(job_id)
            if waiting is None or waiting.state not in ACTIVE_STATES:
                break  # cancelled or reconciled away while queued
            await asyncio.to_thread(self.store.reconcile)  # frees the line if a trainer died
            await asyncio.sleep(1.0)
        job = self.store.get_job(job_id)
        if job is None or job.state not in ACTIVE_STATES:
            return job.to_dict() if job else {"error": "job vanished"}
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.trainer",
            job_id,
            env=trainer_env(self.settings),
            preexec_fn=die_with_parent,
        )
        try:
            code = await proc.wait()
        except asyncio.CancelledError:  # PUT /retrain/cancel
            self.store.request_cancel(job_id)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 30)
            if proc.returncode is None:
                proc.kill()
            self.store.finish(
                job_id, "cancelled", error="cancelled on request; nothing was published"
            )
            raise
        job = self.store.get_job(job_id)
        assert job is not None
        if job.state in ACTIVE_STATES:
            removed = await asyncio.to_thread(self.registry.clean_staging, job.model)
            if code < 0:  # killed by a signal (the OOM killer, an operator, a test)
                self.store.finish(
                    job_id,
                    "interrupted",
                    error=f"the trainer was killed by {signal.Signals(-code).name} during"
                    f" {job.phase}; nothing was published; retry it with"
                    f" POST /jobs/{job_id}/retry",
                )
            else:
                self.store.finish(job_id, "failed", error=f"trainer exited with code {code}")
            log.warning("job %s: trainer exited with %s; removed staging %s", job_id, code, removed)
            job = self.store.get_job(job_id)
            assert job is not None
        strategy = (job.result or {}).get("strategy", "none")
        metrics.RETRAIN_JOBS.labels(strategy, job.state).inc()
        if job.result is not None and job.result.get("promoted") is False:
            source = "trigger" if "trigger" in job.request else "request"
            metrics.CHALLENGERS_REJECTED.labels(job.model, source).inc()
        metrics.RETRAIN_DURATION.observe(time.monotonic() - started)
        return job.to_dict()

    def _overrides(self, name: str) -> dict[str, Any]:
        try:
            return self.store.model_settings(name)
        except StoreUnavailable:
            return {}

    def _settings_for(self, name: str) -> Settings:
        """REFIT_* settings with `name`'s overrides (PUT /models/{name}/settings) applied."""
        return self.settings.model_copy(update=self._overrides(name))

    def _effective_settings(self, name: str) -> dict[str, Any]:
        overrides = self._overrides(name)
        merged = self.settings.model_copy(update=overrides)
        return {
            "overrides": overrides,
            "effective": {key: getattr(merged, key) for key in ModelSettings.model_fields},
        }

    def _policy(self, name: str) -> RetrainPolicy:
        """The trigger policy of `name`: REFIT_* settings, then the model's overrides."""
        return _policy(self._settings_for(name))

    def _fleet_metrics(self) -> None:
        """Workers' heartbeats and the job history as gauges (see metrics.WORKER_HEARTBEAT_AGE)."""
        name, now = self.settings.model_name, time.time()
        for worker in self.store.workers():
            age = now - float(worker["heartbeat_at"])
            if worker["state"] != "stopped" and age < 86_400:
                metrics.WORKER_HEARTBEAT_AGE.labels(worker["id"]).set(round(age, 1))
        jobs = self.store.list_jobs(name, limit=50)
        for state in ("queued", "running"):
            metrics.JOBS.labels(name, state).set(sum(j.state == state for j in jobs))
        finished = sorted(
            (j for j in jobs if j.finished_at is not None), key=lambda j: -float(j.finished_at)
        )
        streak = 0
        for job in finished:
            if job.state not in ("failed", "interrupted"):
                break
            streak += 1
        metrics.RETRAIN_FAILURES_IN_A_ROW.labels(name).set(streak)
        if finished and finished[0].started_at is not None:
            last = finished[0]
            metrics.RETRAIN_LAST_DURATION.labels(name, last.state).set(
                round(float(last.finished_at) - float(last.started_at), 1)
            )

    # -- admin (FastAPI routes, so they can be GET and take path parameters) ---------------
    @admin.get("/models")
    def list_models(self) -> dict[str, Any]:
        """The default model (REFIT_MODEL_NAME): versions with metadata, the aliases, and
        what this worker serves; `models` lists every model (GET /models/{name} for one)."""
        view = self._model_view(self.settings.model_name)
        try:
            names = self.registry.list_models()
        except RegistryUnavailable:
            names = [self.settings.model_name]
        summaries = [self._model_summary(n) for n in sorted(set(names) | {view["model"]})]
        view["models"] = [m for m in summaries if m["production"] or m["default"]]
        view["pool"] = self.pool.view()  # this worker's loaded models
        return view

    @admin.get("/models/{name}", responses=error_responses(400, 404))
    def get_model(self, name: str) -> Any:
        """One model: versions, aliases, what this worker serves of it, readiness."""
        validate_model_name(name)  # 400 by _invalid_name
        view = self._model_view(name)
        if not view["versions"] and name != self.settings.model_name:
            return error(404, f"no model {name!r}", fix="list models with GET /models")
        return view

    def _model_summary(self, name: str) -> dict[str, Any]:
        aliases = self.registry.aliases(name)
        entry = self.pool.entries.get((name, None))
        served = entry.holder.model if entry is not None else None
        return {
            "name": name,
            "production": aliases.get("production"),
            "default": name == self.settings.model_name,
            "loaded_here": served.version if served else None,
        }

    def _model_view(self, name: str) -> dict[str, Any]:
        default = name == self.settings.model_name
        entry = self.pool.entries.get((name, None))
        holder = self.holder if default else (entry.holder if entry else None)
        aliases = self.registry.aliases(name)
        versions = []
        registry_error = None
        try:
            listed = self.registry.list_versions(name)
        except RegistryUnavailable as exc:  # answer with what this replica knows
            listed, registry_error = sorted(set(aliases.values())), str(exc)
        for version in reversed(listed):
            row: dict[str, Any] = {
                "version": version,
                "aliases": [a for a, v in aliases.items() if v == version],
            }
            try:
                meta = self.registry.get(name, version).metadata
            except CorruptVersionError as exc:
                row["status"] = f"corrupt: {exc.problem}"
                versions.append(row)
                continue
            except RegistryUnavailable as exc:
                row["status"] = f"unavailable: {exc}"
                versions.append(row)
                continue
            failed = getattr(holder, "failed_versions", {})
            if version in failed:
                row["status"] = f"failed to load: {failed[version]}"
            else:
                row["status"] = "ok"
            row.update(
                created_at=meta.created_at.isoformat(),
                strategy=meta.strategy,
                reason=meta.reason,
                labels=meta.labels,
                metrics={
                    "accuracy": meta.metrics.accuracy,
                    "macro_f1": meta.metrics.macro_f1,
                    "count": meta.metrics.count,
                },
                data={"count": meta.data.count, "sha256": meta.data.sha256},
                backbone=meta.backbone.name,
                quantized=meta.quantized,
                quantization=(
                    meta.quantization.model_dump(
                        include={"served_on_cpu", "fp32_macro_f1", "int8_macro_f1", "reason"}
                    )
                    if meta.quantization
                    else None
                ),
                parent_version=meta.parent_version,
            )
            versions.append(row)
        served = holder.model if holder is not None else None
        state = self.store.trigger_state(name)
        return {
            "model": name,
            "default": default,
            "production": aliases.get("production"),
            "previous": aliases.get("previous"),
            "shadow": self._shadow_view(aliases) if default else None,
            "retrain_policy": {
                # triggers (feedback count, interval, drift) run for the default model
                "auto_retrain": self.settings.auto_retrain and default,
                **self._policy(name).to_dict(),
                "state": state,
            },
            "settings": self._effective_settings(name),
            "drift": self._drift() if default else None,
            "live_accuracy": self.store.live_accuracy(name),
            "ready": served is not None,
            "serving": {
                "version": served.version if served else None,
                "provider": served.provider if served else None,
                "graph": served.graph if served else None,
                "worker_pid": os.getpid(),
                "loaded": served is not None,
                "error": getattr(holder, "error", None),
                "fetch_error": getattr(holder, "fetch_error", None),
                "last_swap": getattr(holder, "last_swap", None),
            },
            "registry": {"url": self.registry.url, "error": registry_error},
            "trainer": self.settings.trainer,
            "versions": versions,
        }

    @admin.post(
        "/models/promote",
        responses={
            202: {
                "description": "the registry is unreachable: promoted without checking the"
                " files; replicas verify and load it once they can fetch it"
            },
            **error_responses(400, 401, 404, 409, 413, 503),
        },
    )
    def promote(self, body: PromoteRequest) -> Any:
        """Make a version production (auth required when REFIT_API_TOKEN is set)."""
        return self._promote(self.settings.model_name, body)

    @admin.post("/models/{name}/promote", responses=error_responses(400, 401, 404, 409, 413, 503))
    def promote_named(self, name: str, body: PromoteRequest) -> Any:
        """Make a version of model `name` production (auth required)."""
        validate_model_name(name)  # 400 by _invalid_name
        return self._promote(name, body)

    @admin.post("/models/{name}/rollback", responses=error_responses(400, 401, 404, 409, 413, 503))
    def rollback_named(self, name: str) -> Any:
        """Swap production and previous of model `name` (auth required)."""
        validate_model_name(name)  # 400 by _invalid_name
        return self._rollback(name)

    @admin.delete("/models/{name}", responses=error_responses(400, 401, 404, 409, 413, 503))
    def delete_model(self, name: str) -> Any:
        """Delete a model: its versions, aliases, stored examples, jobs and overrides (auth
        required). Refused for the service's default model and while a job of it is queued
        or running."""
        validate_model_name(name)  # 400 by _invalid_name
        if name == self.settings.model_name:
            return error(
                409,
                f"{name!r} is this service's default model (REFIT_MODEL_NAME)",
                fix="serve another default model first",
            )
        active = [j.id for j in self.store.list_jobs(name, 500) if j.state in ACTIVE_STATES]
        if active:
            return error(
                409,
                f"model {name!r} has {len(active)} job(s) queued or running: {', '.join(active)}",
                fix="cancel them (POST /jobs/{id}/cancel) or wait, then delete",
            )
        if not self.registry.list_versions(name) and not self.registry.aliases(name):
            return error(404, f"no model {name!r}", fix="list models with GET /models")
        versions = self.registry.delete_model(name)
        removed = self.store.delete_model(name)
        log.info("model %s deleted: %d versions, %s", name, len(versions), removed)
        return {"model": name, "deleted_versions": versions, "deleted_rows": removed}

    @admin.put("/models/{name}/settings", responses=error_responses(400, 401, 413, 503))
    def put_settings(self, name: str, body: ModelSettings) -> Any:
        """Per-model overrides of the strategy thresholds, the time budget, the promotion
        tolerance and the triggers (auth required); `null` restores the REFIT_* value.
        Stored with the model in the shared store: every replica and trainer uses them."""
        validate_model_name(name)  # 400 by _invalid_name
        changes = body.model_dump(exclude_unset=True)
        effective = {
            **self._effective_settings(name)["effective"],
            **{k: v for k, v in changes.items() if v is not None},
        }
        if effective["feature_extraction_below"] > effective["fine_tuning_at"]:
            return error(
                400,
                "feature_extraction_below must not exceed fine_tuning_at"
                f" ({effective['feature_extraction_below']} > {effective['fine_tuning_at']})",
            )
        self.store.set_model_settings(name, changes)
        return {"model": name, **self._effective_settings(name)}

    def _promote(self, name: str, body: PromoteRequest) -> Any:
        shadow = self.registry.aliases(name).get("shadow")
        try:
            aliases = self.registry.promote(name, body.version)
            if shadow is not None and aliases.get("production") == shadow:
                self.store.record_shadow_decision(
                    name,
                    {
                        "version": shadow,
                        "outcome": "promoted",
                        "reason": "promoted on request (POST /models/promote)",
                        "at": time.time(),
                    },
                )
        except RegistryUnavailable as exc:
            # The alias is the database's; the files are checked by every replica before it
            # loads them, so the promotion can wait for the registry to come back.
            try:
                aliases = self.registry.promote(name, body.version, verify=False)
            except LookupError as bad:
                return error(404, str(bad))
            return JSONResponse(
                {
                    "model": name,
                    **aliases,
                    "warning": f"promoted without checking the files: {exc}; replicas load"
                    " it once they can fetch and verify it (GET /models: serving.fetch_error)",
                },
                status_code=202,
            )
        except LookupError as exc:
            return error(404, str(exc))
        except RegistryError as exc:
            return error(409, str(exc))
        return {"model": name, **aliases}

    @admin.post("/models/shadow", responses=error_responses(400, 401, 404, 409, 413, 503))
    def start_shadow(self, body: PromoteRequest) -> Any:
        """Load a version beside production to score a sample of live traffic
        (REFIT_SHADOW_FRACTION) without answering anyone; it is promoted once it is not
        worse on REFIT_SHADOW_MIN_LABELED linked feedback examples (auth required)."""
        name = self.settings.model_name
        try:
            aliases = self.registry.shadow(name, body.version)
        except LookupError as exc:
            return error(404, str(exc))
        except RegistryError as exc:
            return error(409, str(exc))
        return {"model": name, **aliases}

    @admin.post("/models/shadow/stop", responses=error_responses(401, 409, 413, 503))
    def stop_shadow(self) -> Any:
        """Stop shadow scoring without promoting (auth required)."""
        name = self.settings.model_name
        shadow = self.registry.aliases(name).get("shadow")
        aliases = self.registry.end_shadow(name, shadow, promote=False) if shadow else None
        if aliases is None:
            return error(409, f"model {name!r} has no shadow version")
        self.store.record_shadow_decision(
            name,
            {
                "version": shadow,
                "outcome": "dropped",
                "reason": "stopped on request",
                "at": time.time(),
            },
        )
        return {"model": name, **aliases}

    @admin.post("/models/rollback", responses=error_responses(401, 409, 413, 503))
    def rollback(self) -> Any:
        """Swap production and previous (auth required when REFIT_API_TOKEN is set)."""
        return self._rollback(self.settings.model_name)

    def _rollback(self, name: str) -> Any:
        try:
            aliases = self.registry.rollback(name)
        except LookupError as exc:
            return error(404, str(exc))
        except RegistryError as exc:
            return error(409, str(exc))
        return {"model": name, **aliases}

    @admin.post("/feedback", responses=error_responses(400, 401, 413, 503))
    def feedback(self, body: FeedbackRequest) -> Any:
        """Labeled examples from users (auth required), validated like retrain data and stored
        as pending; a trigger retrains on them (see `retrain_policy` in `GET /models`)."""
        from training.data import DataError, build_dataset

        limits = self.settings
        name = body.model or limits.model_name
        if len(body.examples) > limits.max_examples_per_request:
            return error(
                413,
                f"{len(body.examples)} examples in one request, the limit is {limits.max_examples_per_request}",
                fix="split the request or raise REFIT_MAX_EXAMPLES_PER_REQUEST",
            )
        try:
            dataset = build_dataset(
                ((f"examples[{i}]", e.text, e.label) for i, e in enumerate(body.examples)),
                check_classes=False,
            )
            if dataset.conflicts:
                shown = ", ".join(repr(t[:60]) for t in dataset.conflicts[:5])
                raise DataError(
                    [
                        f"{len(dataset.conflicts)} text(s) appear with different labels in this request ({shown}); keep one label per text"
                    ]
                )
            known = {label for _, label in self.store.dataset(name)}
            labels = known | set(dataset.labels)
            if len(labels) > limits.max_classes:
                raise DataError(
                    [f"{len(labels)} distinct labels, the limit is {limits.max_classes}"]
                )
        except DataError as exc:
            return error(400, f"invalid examples: {exc}", problems=exc.problems[:20])
        ids = {e.text: e.prediction_id for e in body.examples}
        rows = [(t, y, ids.get(t)) for t, y in zip(dataset.texts, dataset.labels, strict=True)]
        _, pending = self.store.add_feedback(name, rows)
        metrics.FEEDBACK_EXAMPLES.labels(name).inc(len(rows))
        metrics.FEEDBACK_PENDING.labels(name).set(pending)
        return {
            "accepted": len(rows),
            "duplicates_dropped": dataset.duplicates_dropped,
            "new_labels": sorted(set(dataset.labels) - known),
            "pending": pending,
            "retrain_at_pending": self._policy(name).min_pending or None,
        }

    @admin.get("/feedback/uncertain", responses=error_responses(401))
    def uncertain(self, limit: int = 50) -> dict[str, Any]:
        """The newest low-confidence inputs, for labeling (auth required). The text is kept
        only with REFIT_STORE_UNCERTAIN_TEXTS=true; otherwise its sha256."""
        limit = max(1, min(limit, 1000))
        return {
            "threshold": self.settings.uncertain_below,
            "texts_stored": self.settings.store_uncertain_texts,
            "inputs": self.store.uncertain(self.settings.model_name, limit),
        }

    @admin.get("/jobs")
    def list_jobs(self, limit: int = 50, model: str | None = None) -> dict[str, Any]:
        """Retrain jobs of a model (default: REFIT_MODEL_NAME), newest first, with phase and
        fraction done."""
        limit = max(1, min(limit, 500))
        name = model or self.settings.model_name
        return {"jobs": [j.to_dict() for j in self.store.list_jobs(name, limit)]}

    @admin.post("/jobs/{job_id}/cancel", responses=error_responses(401, 404, 409, 413, 503))
    def cancel_job(self, job_id: str) -> Any:
        """Cancel a queued or running job; nothing is published (auth required)."""
        job = self.store.get_job(job_id)
        if job is None:
            return error(404, f"no job {job_id!r}", fix="list jobs with GET /jobs")
        if job.state not in ACTIVE_STATES:
            return error(409, f"job {job_id} already {job.state}; nothing to cancel")
        self.store.request_cancel(job_id)
        if job.state == "queued":
            self.store.finish(job_id, "cancelled", error="cancelled before it started")
        updated = self.store.get_job(job_id)
        assert updated is not None
        return updated.to_dict()

    @admin.post(
        "/jobs/{job_id}/retry", status_code=202, responses=error_responses(401, 404, 409, 413, 503)
    )
    async def retry_job(self, job_id: str) -> Any:
        """Run a failed, interrupted or cancelled job again on the same data (auth required)."""
        job = self.store.get_job(job_id)
        if job is None:
            return error(404, f"no job {job_id!r}", fix="list jobs with GET /jobs")
        if job.state not in ("failed", "interrupted", "cancelled"):
            return error(
                409,
                f"job {job_id} is {job.state}; only failed, interrupted or cancelled jobs can be retried",
            )
        retried = self.store.retry_job(job, owner_pid=os.getpid() if self.embedded else None)
        if self.embedded:
            task = asyncio.get_running_loop().create_task(self._run_job(retried.id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        log.info("job %s queued as a retry of %s", retried.id, job_id)
        return JSONResponse(retried.to_dict(), status_code=202)

    # -- Open Inference Protocol V2 (REST): service/v2.py -------------------------------
    @admin.get("/v2")
    def v2_server(self) -> dict[str, Any]:
        return {"name": "refit", "version": _VERSION, "extensions": ["binary_tensor_data"]}

    @admin.get("/v2/health/live")
    def v2_live(self) -> dict[str, Any]:
        return {"live": True}

    @admin.get("/v2/health/ready", responses=error_responses(503))
    def v2_ready(self) -> Any:
        if self.holder.model is None:
            return JSONResponse({"error": self.holder.error or "no model loaded"}, 503)
        return {"ready": True}

    @admin.get("/v2/models/{name}", responses=error_responses(400, 404, 503))
    def v2_metadata(self, name: str) -> Any:
        return self._v2_metadata(name, None)

    @admin.get("/v2/models/{name}/versions/{version}", responses=error_responses(400, 404, 503))
    def v2_version_metadata(self, name: str, version: str) -> Any:
        return self._v2_metadata(name, version)

    @admin.get("/v2/models/{name}/ready", responses=error_responses(400, 404, 503))
    async def v2_model_ready(self, name: str) -> Any:
        return await self._v2_ready(name, None)

    @admin.get(
        "/v2/models/{name}/versions/{version}/ready", responses=error_responses(400, 404, 503)
    )
    async def v2_version_ready(self, name: str, version: str) -> Any:
        return await self._v2_ready(name, version)

    @admin.post("/v2/models/{name}/infer", responses=error_responses(400, 404, 413, 503))
    async def v2_infer(self, name: str, request: Request) -> Any:
        return await self._v2_infer(name, None, request)

    @admin.post(
        "/v2/models/{name}/versions/{version}/infer",
        responses=error_responses(400, 404, 413, 503),
    )
    async def v2_version_infer(self, name: str, version: str, request: Request) -> Any:
        return await self._v2_infer(name, version, request)

    def _v2_metadata(self, name: str, version: str | None) -> Any:
        validate_model_name(name)  # 400 by _invalid_name
        try:
            target = version or self.registry.resolve(name, "production")
            meta = self.registry.get(name, target).metadata
            versions = self.registry.list_versions(name)
        except RegistryUnavailable as exc:
            return JSONResponse({"error": str(exc)}, 503, headers={"Retry-After": "5"})
        except (RegistryError, LookupError, FileNotFoundError, CorruptVersionError):
            what = f"{name}/{version}" if version else f"a production version of {name!r}"
            return JSONResponse({"error": f"no {what}"}, 404)
        return v2.metadata(name, versions, list(meta.labels))

    async def _v2_ready(self, name: str, version: str | None) -> Any:
        validate_model_name(name)  # 400 by _invalid_name
        if name == self.settings.model_name and version is None:
            if self.holder.model is None:
                return JSONResponse({"error": "not ready"}, 503)
        else:
            try:
                self.pool.release(await self.pool.acquire(name, version))
            except UnknownModel as exc:
                return JSONResponse({"error": str(exc)}, 404)
            except (ModelLoadError, RegistryUnavailable) as exc:
                return JSONResponse({"error": str(exc)}, 503)
        return {"name": name, "ready": True}

    async def _v2_infer(self, name: str, version: str | None, request: Request) -> Any:
        validate_model_name(name)  # 400 by _invalid_name
        try:
            parsed = v2.parse_infer(
                await request.body(), request.headers.get("inference-header-content-length")
            )
        except v2.V2Error as exc:
            return JSONResponse({"error": str(exc)}, exc.status)
        texts = parsed["texts"]
        try:
            self._check_predict(texts, parsed["top_k"])
            served, probs, _, _ = await self._infer(texts, name, version)
        except _Refused as refused:
            return refused.response(bare=True)
        for row in probs:
            self._counter(served, served.labels[int(np.argmax(row))]).inc()
        return v2.infer_response(parsed, name, served.version, served.labels, probs)

    @admin.get("/jobs/{job_id}", responses=error_responses(404))
    def get_job(self, job_id: str) -> Any:
        job = self.store.get_job(job_id)
        if job is None:
            return error(404, f"no job {job_id!r}", fix="list jobs with GET /jobs")
        return job.to_dict()


def _policy(settings: Settings) -> RetrainPolicy:
    return RetrainPolicy(
        min_pending=settings.retrain_min_pending,
        interval_s=settings.retrain_interval_s,
        drift_threshold=settings.drift_threshold,
        backoff_s=settings.retrain_backoff_s,
    )


try:
    _VERSION = importlib.metadata.version("refit-service")
except importlib.metadata.PackageNotFoundError:  # a Bento or a bare checkout
    _VERSION = "0.1.0"
_SERVING: Any = None  # this worker's service instance, once built (see PredictFastPath)


def _fast_predict() -> Any:
    return _SERVING.classify if _SERVING is not None else None


# First added runs first: the deadline around everything, then limits and auth before
# anything reads or stores the body; the fast path for /predict last, inside all of them.
Refit.add_asgi_middleware(DeadlineMiddleware, settings=SETTINGS)
Refit.add_asgi_middleware(ErrorShapeMiddleware)
Refit.add_asgi_middleware(LimitsAndAuthMiddleware, settings=SETTINGS)
Refit.add_asgi_middleware(RetrainSubmitMiddleware, settings=SETTINGS)
Refit.add_asgi_middleware(BoundedMetricsMiddleware)
Refit.add_asgi_middleware(PredictFastPath, handler=_fast_predict)
