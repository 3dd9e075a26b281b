"""Inference: one immutable loaded model, swapped atomically; requests batched in-process.

Imports only onnxruntime, tokenizers, numpy and `models` (a test checks that torch and
transformers never load in an inference worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models import ModelVersion, Registry, RegistryError, RegistryUnavailable
from models._inference import predict_proba, unpadded

log = logging.getLogger(__name__)

_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def release_memory() -> None:
    """Give freed heap back to the OS after a model was dropped (glibc only; elsewhere a
    no-op). Without it each swap leaves the old session's ~90 MB of weights as fragmented
    free heap: 12 swaps took a process from 200 to ~280 MB, with it RSS stays at ~188 MB
    (12 load/drop cycles of a MiniLM version in one process, measured in one run)."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


_trim: Any = None


class ProviderError(RuntimeError):
    """A GPU was required but the session runs on CPU."""


@dataclass(frozen=True)
class LoadedModel:
    """Everything a request needs, together: a request never sees two versions."""

    name: str
    version: str
    labels: tuple[str, ...]
    session: Any  # onnxruntime.InferenceSession
    tokenizer: Any  # tokenizers.Tokenizer
    provider: str
    strategy: str
    macro_f1: float
    graph: str = "model.onnx"  # the file served: model.int8.onnx on CPU when the policy chose it
    loaded_at: float = field(default_factory=time.time)

    pad_id: int = 0

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return predict_proba(self.session, self.tokenizer, texts, pad_id=self.pad_id)


def load_model(
    mv: ModelVersion,
    *,
    threads: int,
    graph_optimization: str,
    device: str,
    allow_int8: bool = True,
) -> LoadedModel:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _OPT_LEVELS[graph_optimization]
    )
    providers = ["CPUExecutionProvider"]
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
            except Exception as exc:  # missing CUDA libraries: the session falls back to CPU
                log.warning("onnxruntime.preload_dlls failed: %s", exc)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    graph = mv.graph_path(cuda=providers[0] == "CUDAExecutionProvider", allow_int8=allow_int8)
    session = ort.InferenceSession(str(graph), options, providers=providers)
    provider = session.get_providers()[0]
    if device == "cuda" and provider != "CUDAExecutionProvider":
        raise ProviderError(
            f"REFIT_DEVICE=cuda but onnxruntime runs {mv.name}/{mv.version} on {provider} "
            f"(available: {ort.get_available_providers()}); install the gpu extra on a GPU host or set REFIT_DEVICE=cpu"
        )
    tokenizer = Tokenizer.from_file(str(mv.path / "tokenizer.json"))
    pad_id = unpadded(tokenizer)
    model = LoadedModel(
        name=mv.name,
        version=mv.version,
        labels=tuple(mv.metadata.labels),
        session=session,
        tokenizer=tokenizer,
        provider=provider,
        strategy=mv.metadata.strategy,
        macro_f1=mv.metadata.metrics.macro_f1,
        graph=graph.name,
        pad_id=pad_id,
    )
    model.predict_proba(["warm up"])  # first run allocates; do it before serving
    log.info(
        "loaded %s/%s (%s) on %s (pid %d)", mv.name, mv.version, graph.name, provider, os.getpid()
    )
    return model


class ModelHolder:
    """Follows the production alias and swaps in a new production model.

    Reading the alias generation is cheap (one indexed row); fetching (remote registry),
    verifying and loading happen outside the lock, the swap is one reference assignment
    under it. When the store or the registry is away, the loaded model keeps serving and the
    next poll tries again.
    """

    def __init__(
        self,
        registry: Registry,
        name: str,
        *,
        threads: int,
        graph_optimization: str,
        device: str,
        alias: str = "production",
        allow_int8: bool = True,
    ) -> None:
        self.registry = registry
        self.name = name
        self.alias = alias  # production, or shadow (unloaded when the alias goes away)
        self._load_kwargs = {
            "threads": threads,
            "graph_optimization": graph_optimization,
            "device": device,
            "allow_int8": allow_int8,
        }
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._seen: Any = None
        self.error: str | None = None
        self.failed_versions: dict[str, str] = {}
        self.fetch_error: dict[str, str] | None = None  # a version it could not fetch (yet)
        self.last_swap: dict[str, Any] | None = None  # how long the last swap took
        self.swaps = 0

    @property
    def model(self) -> LoadedModel | None:
        with self._lock:
            return self._model

    def _warn(self, message: str, every_s: float = 30.0) -> None:
        """An outage is logged when it starts and then every `every_s`, not every poll."""
        now = time.monotonic()
        last = getattr(self, "_last_warning", (None, 0.0))
        if message != last[0] or now - last[1] >= every_s:
            log.warning("%s; still serving what is loaded", message)
            self._last_warning = (message, now)

    def refresh(self) -> bool:
        """Load the production version if it changed; True when a swap happened."""
        try:
            stamp = self.registry.alias_token(self.name)
        except Exception as exc:  # the store is away: keep serving what is loaded
            self._warn(f"cannot read the aliases of {self.name}: {exc}")
            return False
        if stamp is not None and stamp == self._seen:
            return False
        self._seen = stamp
        try:
            target = self.registry.resolve(self.name, self.alias)
        except (RegistryError, LookupError):
            self.error = f"model {self.name!r} has no {self.alias} version yet"
            if self.alias != "production" and self.model is not None:
                with self._lock:  # the shadow was promoted or dropped: free its memory
                    self._model = None
                release_memory()
                log.info("stopped %s scoring of %s", self.alias, self.name)
                return True
            return False
        current = self.model
        if current is not None and current.version == target:
            return False
        if target in self.failed_versions:
            return False
        started = time.perf_counter()
        try:
            mv = self.registry.verify(self.name, target)
            fetched = time.perf_counter()
            loaded = load_model(mv, **self._load_kwargs)
        except RegistryUnavailable as exc:  # transient: the next poll tries again
            self._seen = None
            self.fetch_error = {"version": target, "error": str(exc)}
            self._warn(f"cannot fetch {self.name}/{target}: {exc}")
            return False
        except ProviderError as exc:
            self.error = str(exc)
            log.error("%s", exc)
            return False
        except Exception as exc:  # a corrupt or unloadable version: keep serving the last good one
            self.failed_versions[target] = str(exc)
            self.error = f"cannot load {self.name}/{target}: {exc}"
            log.error("%s; still serving %s", self.error, current.version if current else "nothing")
            return False
        with self._lock:
            self._model = loaded
        done = time.perf_counter()
        self.last_swap = {
            "version": loaded.version,
            "fetch_verify_s": round(fetched - started, 3),
            "load_s": round(done - fetched, 3),
            "at": time.time(),
        }
        self.error = None
        self.fetch_error = None
        self.swaps += 1
        log.info("now serving %s/%s as %s", self.name, loaded.version, self.alias)
        try:  # cached copies of versions nothing points to (remote registries)
            keep = {loaded.version, *self.registry.aliases(self.name).values()}
            self.registry.prune_cache(self.name, keep)
        except Exception as exc:
            log.warning("cache not pruned: %s", exc)
        return True


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future


class MicroBatcher:
    """Gathers concurrent requests for up to `max_latency_ms` (or `max_texts`) and runs
    one onnxruntime call for all of them in a thread, against one model snapshot."""

    def __init__(
        self, holder: ModelHolder, *, max_texts: int, max_latency_ms: float, on_batch=None
    ) -> None:
        self.holder = holder
        self.max_texts = max_texts
        self.max_latency = max_latency_ms / 1000
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._last_requests = 0

    def close(self) -> None:
        """Stop the batch loop (an unloaded model: nothing is queued, nothing in flight)."""
        if self._task is not None:
            self._task.cancel()
        self._task, self._queue = None, None

    def _ensure_started(self) -> asyncio.Queue[_Pending]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self._queue

    async def submit(self, texts: list[str]) -> tuple[LoadedModel, np.ndarray]:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._ensure_started().put(_Pending(texts, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            size = len(first.texts)
            # Wait for company only when the last batch had some: a lone client (concurrency 1)
            # is never delayed; under load, requests also queue up while a batch runs.
            wait = self.max_latency if self._last_requests > 1 else 0.0
            deadline = loop.time() + wait
            while size < self.max_texts:
                if not self._queue.empty():
                    item = self._queue.get_nowait()
                    batch.append(item)
                    size += len(item.texts)
                    continue
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
                batch.append(item)
                size += len(item.texts)
            self._last_requests = len(batch)
            await self._infer(batch, size)

    async def _infer(self, batch: list[_Pending], size: int) -> None:
        model = self.holder.model
        if model is None:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(RuntimeError("no model loaded"))
            return
        texts = [t for item in batch for t in item.texts]
        started = time.perf_counter()
        try:
            probs = await asyncio.to_thread(model.predict_proba, texts)
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(model, size, time.perf_counter() - started)
        offset = 0
        for item in batch:
            n = len(item.texts)
            if not item.future.done():
                item.future.set_result((model, probs[offset : offset + n]))
            offset += n


class FixedVersion:
    """A holder for one explicit version (V2 `/versions/{v}`): loaded once, never swapped."""

    error: str | None = None

    def __init__(self, registry: Registry, name: str, version: str, **load_kwargs: Any) -> None:
        self.registry, self.name, self.version = registry, name, version
        self._load_kwargs = load_kwargs
        self.model: LoadedModel | None = None

    def refresh(self) -> bool:
        if self.model is not None:
            return False
        self.model = load_model(self.registry.verify(self.name, self.version), **self._load_kwargs)
        return True


class UnknownModel(LookupError):
    """Nothing to serve under that name (or version): 404."""


class ModelLoadError(RuntimeError):
    """It exists but could not be fetched or loaded now: 503."""


@dataclass
class PoolEntry:
    key: tuple[str, str | None]  # (model, explicit version or None for production)
    holder: Any  # ModelHolder or FixedVersion
    batcher: MicroBatcher
    pinned: bool = False
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)


class ModelPool:
    """The models one worker serves: the service's default model (pinned, always loaded),
    others loaded on their first request and kept within `max_loaded` models, unloading the
    least recently used one that has no request in flight (never one that has: the pool may
    then hold more until those finish). One batcher per loaded model version."""

    def __init__(
        self,
        registry: Registry,
        *,
        max_loaded: int,
        load_kwargs: dict[str, Any],
        batcher_kwargs: dict[str, Any],
        on_change: Any = None,
    ) -> None:
        self.registry = registry
        self.on_change = on_change  # called with (model, "load" | "unload")
        self.max_loaded = max_loaded
        self.load_kwargs = load_kwargs
        self.batcher_kwargs = batcher_kwargs
        self.entries: dict[tuple[str, str | None], PoolEntry] = {}
        self._loading: dict[tuple[str, str | None], asyncio.Future] = {}
        self.loads = 0
        self.unloads = 0

    def pin(self, name: str, holder: Any, batcher: MicroBatcher) -> None:
        self.entries[(name, None)] = PoolEntry((name, None), holder, batcher, pinned=True)

    def view(self) -> dict[str, Any]:
        return {
            "max_loaded": self.max_loaded,
            "loaded": [
                {
                    "model": e.key[0],
                    "version": e.holder.model.version if e.holder.model else None,
                    "pinned_version": e.key[1],
                    "in_flight": e.in_flight,
                    "default": e.pinned,
                }
                for e in self.entries.values()
            ],
            "loads": self.loads,
            "unloads": self.unloads,
        }

    async def acquire(self, name: str, version: str | None = None) -> PoolEntry:
        """The entry serving `name` (its production, or `version`), loading it if needed;
        the caller must `release` it. UnknownModel when there is nothing to serve."""
        key = (name, version)
        entry = self.entries.get(key)
        if entry is None:
            pending = self._loading.get(key)
            if pending is None:  # one load per key, however many requests wait for it
                pending = asyncio.get_running_loop().create_future()
                self._loading[key] = pending
                try:
                    entry = await asyncio.to_thread(self._load, name, version)
                    self.entries[key] = entry
                    pending.set_result(entry)
                except BaseException as exc:
                    pending.set_exception(exc)
                    pending.exception()  # retrieved: no "never retrieved" warning
                    raise
                finally:
                    del self._loading[key]
            else:
                entry = await asyncio.shield(pending)
        entry.in_flight += 1
        entry.last_used = time.monotonic()
        self._evict()
        return entry

    def release(self, entry: PoolEntry) -> None:
        entry.in_flight -= 1
        if len(self.entries) > self.max_loaded:  # over budget while models were busy
            self._evict()

    def _load(self, name: str, version: str | None) -> PoolEntry:
        try:
            if version is None:
                self.registry.resolve(name, "production")
                holder: Any = ModelHolder(self.registry, name, **self.load_kwargs)
            else:
                self.registry.get(name, version)
                holder = FixedVersion(self.registry, name, version, **self.load_kwargs)
        except (RegistryError, LookupError, FileNotFoundError) as exc:
            raise UnknownModel(
                f"model {name!r} has no version {version!r}"
                if version
                else f"model {name!r} does not exist or has no production version"
            ) from exc
        try:
            holder.refresh()
        except Exception as exc:
            raise ModelLoadError(f"cannot load {name}/{version}: {exc}") from exc
        if holder.model is None:
            raise ModelLoadError(holder.error or f"model {name!r} could not be loaded")
        self.loads += 1
        if self.on_change is not None:
            self.on_change(name, "load")
        log.info("loaded %s/%s on demand", name, holder.model.version)
        return PoolEntry((name, version), holder, MicroBatcher(holder, **self.batcher_kwargs))

    def _evict(self) -> None:
        while len(self.entries) > self.max_loaded:
            idle = [e for e in self.entries.values() if not e.pinned and e.in_flight == 0]
            if not idle:
                return  # all busy: over budget until they finish
            self._drop(min(idle, key=lambda e: e.last_used))

    def _drop(self, victim: PoolEntry) -> None:
        if victim.in_flight or self.entries.get(victim.key) is not victim:
            return
        del self.entries[victim.key]
        victim.batcher.close()
        self.unloads += 1
        if self.on_change is not None:
            self.on_change(victim.key[0], "unload")
        log.info("unloaded %s", "/".join(filter(None, victim.key)))
        release_memory()

    def refresh(self) -> list[PoolEntry]:
        """Follow the production alias of every loaded, unpinned model (the pinned default
        model has its own watcher); runs in a thread. Returns the entries whose model has no
        production version any more (deleted): the event loop unloads them with `drop`."""
        gone = []
        for entry in list(self.entries.values()):
            if not entry.pinned and isinstance(entry.holder, ModelHolder):
                with contextlib.suppress(Exception):
                    entry.holder.refresh()
                    if not self.registry.aliases(entry.key[0]).get("production"):
                        gone.append(entry)
        return gone

    def drop(self, entries: list[PoolEntry]) -> None:
        """Unload these entries now if idle (event loop only)."""
        for entry in entries:
            self._drop(entry)
