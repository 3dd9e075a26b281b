"""Opening the state layer from settings: the store (database) and the model registry
(folder or S3) with its aliases in the store. Everything else in `service/` receives these
two objects and never asks which backend is behind them."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from models import LocalStorage, Registry
from service.settings import Settings
from service.stores import Store

log = logging.getLogger(__name__)


def open_store(settings: Settings, *, migrate: bool = True) -> Store:
    return Store(settings.database, busy_timeout_s=settings.store_busy_timeout_s, migrate=migrate)


def open_registry(settings: Settings, store: Store) -> Registry:
    storage: Any
    if settings.registry_url and settings.registry_url.startswith("s3://"):
        from models._s3 import S3Storage

        storage = S3Storage(
            settings.registry_url,
            settings.version_cache,
            endpoint_url=settings.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL"),
        )
    else:
        storage = LocalStorage(settings.registry_root)
    registry = Registry(storage=storage, aliases=store.aliases)
    if isinstance(storage, LocalStorage):
        import_file_aliases(registry, store)
    return registry


def open_state(settings: Settings) -> tuple[Store, Registry]:
    store = open_store(settings)
    return store, open_registry(settings, store)


def import_file_aliases(registry: Registry, store: Store) -> list[str]:
    """A registry folder from the single-node release keeps its aliases in
    `<name>/aliases.json`; move them into the store once (the file is renamed to
    `aliases.json.imported`), so that the store is their one source of truth."""
    from models import FileAliases, RegistryError

    imported = []
    for name in registry.list_models():
        path = registry.model_dir(name) / "aliases.json"
        try:
            aliases, _ = FileAliases(registry.root).read(name)
        except RegistryError as exc:  # unreadable: leave it for the operator
            log.error("%s", exc)
            continue
        if not aliases:
            continue  # no file (or another process imported it first)
        if store.aliases.compare_and_set(name, 0, aliases):
            imported.append(name)
            log.info("imported the aliases of %s from %s: %s", name, path, aliases)
        else:
            log.warning(
                "%s: the store already has aliases for %s (%s); the file is ignored",
                path,
                name,
                store.aliases.read(name)[0],
            )
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, path.with_name("aliases.json.imported"))
    return imported
