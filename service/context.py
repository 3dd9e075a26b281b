"""The runtime context of one inference worker: everything the routes, the predict path and
the background loops share, built once from settings and passed explicitly.

Routes reach it with `Depends(current)` (the live BentoML service's `context`); a test can
build one itself and override `current`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

import bentoml
from fastapi import Depends

from models import RegistryError, RegistryUnavailable
from service import metrics
from service.batcher import MicroBatcher
from service.dataplane import DataPlane
from service.loading import LoadedModel, ModelHolder, release_memory
from service.pool import ModelPool
from service.runner import JobRunner
from service.schemas import ModelSettings
from service.settings import Settings
from service.state import open_state
from service.stores import StoreUnavailable
from service.triggers import RetrainPolicy

log = logging.getLogger(__name__)


class Context:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store, self.registry = open_state(settings)
        self.embedded = settings.trainer == "embedded"
        load_kwargs = {
            "threads": settings.threads,
            "graph_optimization": settings.graph_optimization,
            "device": settings.device,
            "allow_int8": settings.quantize != "never",
        }
        batcher_kwargs = {
            "max_texts": settings.max_batch_texts,
            "max_latency_ms": settings.max_latency_ms,
        }
        self.load_kwargs, self.batcher_kwargs = load_kwargs, batcher_kwargs
        self.holder = ModelHolder(self.registry, settings.model_name, **load_kwargs)
        # production batchers score a lone small request inline; challengers never do
        serving = {**batcher_kwargs, "on_batch": self.record_batch}
        serving["inline_chars"] = settings.inline_max_chars
        self.batcher = MicroBatcher(self.holder, **serving)
        # other named models, loaded on their first request (REFIT_MAX_LOADED_MODELS)
        self.pool = ModelPool(
            self.registry,
            max_loaded=settings.max_loaded_models,
            load_kwargs=load_kwargs,
            batcher_kwargs=serving,
            on_change=lambda model, event: metrics.MODEL_LOADS.labels(model, event).inc(),
        )
        self.pool.pin(settings.model_name, self.holder, self.batcher)
        # per model served here: a challenger that passed the offline gate, scoring a sample
        # of that model's live traffic (followed by `swap`, dropped with the model)
        self.shadows: dict[str, Challenger] = {
            settings.model_name: self._shadow(settings.model_name)
        }
        # and a canary answering a share of its callers (service/canary.py), with this
        # worker's window of both versions' answers
        self.canaries: dict[str, Challenger] = {}
        self.canary_windows: dict[str, Any] = {}
        self._served: LoadedModel | None = None
        self._trim_polls = 0
        self._background: set[asyncio.Task] = set()
        # live traffic of every model, flushed to the store every REFIT_TRIGGER_POLL_S:
        # (model, version, label) -> [count, confidence sum]; uncertain inputs by model
        self.traffic: dict[tuple[str, str, str], list[float]] = {}
        self.uncertain: list[tuple[str, str, str, float, str, float]] = []
        self.served_ids: list[tuple[Any, ...]] = []
        # texts worth a label of models whose `store_texts` is on (the labeling queue)
        self.queue_inputs: list[tuple[str, dict[str, Any]]] = []
        self._settings_cache: dict[str, tuple[Settings, float]] = {}
        self.runner = JobRunner(settings, self.store, self.registry)
        self.dataplane = DataPlane(self)
        self.swap(force=True)

    def _shadow(self, name: str, alias: str = "shadow") -> Challenger:
        # a shadow answers nobody: one thread leaves the other cores to production
        threads = 1 if alias == "shadow" else self.load_kwargs["threads"]
        holder = ModelHolder(
            self.registry, name, **{**self.load_kwargs, "threads": threads}, alias=alias
        )
        # a canary answers its callers (scored inline like production); a shadow nobody
        inline = 0 if alias == "shadow" else self.settings.inline_max_chars
        return Challenger(holder, MicroBatcher(holder, **self.batcher_kwargs, inline_chars=inline))

    def served_here(self) -> dict[str, LoadedModel]:
        """The production model of each model loaded in this worker."""
        return {
            key[0]: entry.holder.model
            for key, entry in list(self.pool.entries.items())
            if key[1] is None and entry.holder.model is not None
        }

    def follow_shadows(self) -> None:
        """Give every model loaded here its shadow and canary slots and follow those aliases
        (in a thread, from `swap`); `drop_shadows` unloads the slots of models gone."""
        for name in {self.settings.model_name, *self.served_here()}:
            for alias, slots in (("shadow", self.shadows), ("canary", self.canaries)):
                slot = slots.get(name)
                if slot is None:
                    slot = slots.setdefault(name, self._shadow(name, alias))
                try:
                    if slot.holder.refresh() and alias == "canary":
                        self.canary_windows.pop(name, None)  # a new canary: a new window
                except Exception:  # a challenger never gets in production's way
                    log.exception("%s refresh of %s failed", alias, name)

    def drop_shadows(self) -> None:
        """Unload the challengers of models no longer loaded here (event loop only)."""
        keep = {key[0] for key in self.pool.entries}
        for slots in (self.shadows, self.canaries):
            for name in [n for n in list(slots) if n not in keep]:
                slot = slots.pop(name)
                if slot.busy == 0:
                    slot.batcher.close()
                else:  # still scoring: try again at the next poll
                    slots.setdefault(name, slot)

    # -- what routes ask ------------------------------------------------------------------
    def is_default(self, name: str) -> bool:
        return name == self.settings.model_name

    def ready(self) -> bool:
        return self.holder.model is not None and self.holder.error is None

    def overrides(self, name: str) -> dict[str, Any]:
        try:
            return self.store.model_settings.get(name)
        except StoreUnavailable:
            return {}

    def settings_for(self, name: str) -> Settings:
        """REFIT_* settings with `name`'s overrides (PUT /models/{name}/settings) applied."""
        return self.settings.model_copy(update=self.overrides(name))

    def cached_settings(self, name: str) -> Settings:
        """`settings_for(name)` as last read from the store: what the prediction path asks
        (queue served texts? the canary's share?). Read at once the first time; then the
        monitor re-reads it in a thread (`reread_settings`), so a slow or unreachable
        store never holds up requests on the event loop."""
        known = self._settings_cache.get(name)
        if known is None:
            fresh = self._read_settings(name, self.settings)  # defaults if the store is away
            known = self._settings_cache[name] = (fresh, time.monotonic())
        return known[0]

    def reread_settings(self, older_than_s: float = 4.0) -> None:
        """Re-read the cached settings older than `older_than_s` (the monitor calls this
        in a thread every swap poll, before the swaps: a change shows within ~5 s)."""
        for name, (known, read_at) in list(self._settings_cache.items()):
            if time.monotonic() - read_at > older_than_s:
                self._settings_cache[name] = (self._read_settings(name, known), time.monotonic())

    def _read_settings(self, name: str, fallback: Settings) -> Settings:
        try:
            return self.settings.model_copy(update=self.store.model_settings.get(name))
        except StoreUnavailable:  # keep what was known
            return fallback

    def stores_texts(self, name: str) -> bool:
        """Whether `name` queues served texts for labeling (its `store_texts` setting)."""
        return self.cached_settings(name).store_texts

    def effective_settings(self, name: str) -> dict[str, Any]:
        overrides = self.overrides(name)
        merged = self.settings.model_copy(update=overrides)
        return {
            "overrides": overrides,
            "effective": {key: getattr(merged, key) for key in ModelSettings.model_fields},
        }

    def policy(self, name: str) -> RetrainPolicy:
        """The trigger policy of `name`: REFIT_* settings, then the model's overrides."""
        return retrain_policy(self.settings_for(name))

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run `work` in the background, kept referenced until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- metrics --------------------------------------------------------------------------
    def record_batch(self, model: LoadedModel, size: int, seconds: float) -> None:
        latency, sizes = _batch_series(model.name)
        latency.observe(seconds)
        sizes.observe(size)

    def versions_to_expose(self) -> dict[str, set[str]]:
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
        for name, slot in [*self.shadows.items(), *self.canaries.items()]:
            if slot.holder.model is not None:
                keep.setdefault(name, set()).add(slot.holder.model.version)
        return keep

    # -- hot swap -------------------------------------------------------------------------
    def swap(self, force: bool = False) -> None:
        if self._trim_polls:  # a batch in flight during the swap may have freed the old
            self._trim_polls -= 1  # model only after the trim: trim again on later polls
            release_memory()
        self.follow_shadows()
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


@dataclass
class Challenger:
    """A model's shadow or canary version loaded beside its production, and its load."""

    holder: ModelHolder
    batcher: MicroBatcher
    busy: int = 0  # texts queued or running in its batcher
    latency: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=2000))


def retrain_policy(settings: Settings) -> RetrainPolicy:
    return RetrainPolicy(
        min_pending=settings.retrain_min_pending,
        interval_s=settings.retrain_interval_s,
        drift_threshold=settings.drift_threshold,
        backoff_s=settings.retrain_backoff_s,
    )


@functools.cache
def _batch_series(name: str) -> tuple[Any, Any]:
    return metrics.INFERENCE_LATENCY.labels(name), metrics.BATCH_SIZE.labels(name)


def current() -> Context:
    """The context of the service instance this worker runs (a FastAPI dependency)."""
    return bentoml.get_current_service().context


def current_or_none() -> Context | None:
    """As `current`, or None before this worker's service instance exists."""
    try:
        return current()
    except Exception:  # BentoMLException: not instantiated yet
        return None


Ctx = Annotated[Context, Depends(current)]  # a route's parameter: `ctx: Ctx`
