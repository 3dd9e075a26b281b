"""Loading a model version for inference: one immutable `LoadedModel` (session, tokenizer,
labels together), followed by a `ModelHolder` that swaps it atomically when the production
alias moves, or a `FixedVersion` that never swaps.

Imports only onnxruntime, tokenizers, numpy and `models` (a test checks that torch and
transformers never load in an inference worker).
"""

from __future__ import annotations

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
from models._detector import Detector
from models._inference import Scored, score, score_and_embed, unpadded

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
    temperature: float = 1.0  # the version's calibration (metadata.calibration)
    detector: Detector | None = None  # None: never out of scope (off, or an older version)
    out_of_scope_label: str = "out_of_scope"
    thresholds: Any = None  # numpy (labels,): a multi-label version's; None: single-label

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None

    def score(self, texts: Sequence[str]) -> Scored:
        """Calibrated probabilities and the out-of-scope decision, from one graph run."""
        return score(
            self.session,
            self.tokenizer,
            texts,
            pad_id=self.pad_id,
            temperature=self.temperature,
            detector=self.detector,
            thresholds=self.thresholds,
        )

    def score_and_embed(self, texts: Sequence[str]) -> tuple[Scored, Any]:
        """`score` plus the pooled sentence embeddings (None: a graph without them)."""
        return score_and_embed(
            self.session,
            self.tokenizer,
            texts,
            pad_id=self.pad_id,
            temperature=self.temperature,
            detector=self.detector,
            thresholds=self.thresholds,
        )


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
        temperature=mv.metadata.temperature,
        detector=Detector.for_version(mv.metadata.out_of_scope, mv.path),
        out_of_scope_label=oos.label if (oos := mv.metadata.out_of_scope) else "out_of_scope",
        thresholds=_thresholds(mv),
    )
    model.score(["warm up"])  # first run allocates; do it before serving
    log.info(
        "loaded %s/%s (%s) on %s (pid %d)", mv.name, mv.version, graph.name, provider, os.getpid()
    )
    return model


def _thresholds(mv: ModelVersion) -> Any:
    multi = mv.metadata.multi_label
    if multi is None:
        return None
    return np.asarray([multi.thresholds[x] for x in mv.metadata.labels], dtype=np.float32)


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
        log.info("now serving %s/%s as %s", self.name, loaded.version, self.alias)
        try:  # cached copies of versions nothing points to (remote registries)
            keep = {loaded.version, *self.registry.aliases(self.name).values()}
            self.registry.prune_cache(self.name, keep)
        except Exception as exc:
            log.warning("cache not pruned: %s", exc)
        return True


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
