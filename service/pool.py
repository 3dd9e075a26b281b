"""The models one worker serves, loaded on demand within a budget (LRU)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from models import Registry, RegistryError
from service.batcher import MicroBatcher
from service.loading import FixedVersion, ModelHolder, release_memory

log = logging.getLogger(__name__)


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
