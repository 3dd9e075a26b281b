"""A versioned model registry: immutable versions in storage, aliases behind compare-and-set.

Storage (`LocalStorage`, the default, or `models._s3.S3Storage`)::

    <root>/<name>/<version>/model.onnx, tokenizer.json, ..., metadata.json
    <root>/<name>/.staging-<version>.<pid>/ work in progress, never listed

A version exists once its `metadata.json` exists (written last, with every file's sha256).
On a folder every observable change is one `os.rename`/`os.replace` of something complete and
fsynced, so a crash leaves either no version or a complete one.

Aliases (production/previous/shadow) live in an `AliasStore`: `FileAliases` (`<root>/<name>/
aliases.json`, for a registry used as a library) or the service's database
(`service.state`), always moved by compare-and-set so that two promotions cannot interleave.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from models._errors import (
    CorruptVersionError,
    RegistryError,
    VersionNotFoundError,
)
from models._metadata import ModelMetadata
from models._storage import (
    _STAGING_PREFIX,
    _STALE_STAGING_S,
    _VERSION_RE,
    ALIASES,
    METADATA_FILE,
    AliasStore,
    FileAliases,
    LocalStorage,
    ModelVersion,
    Staging,
    default_home,
    new_version_id,
    sha256_file,
    validate_model_name,
)


class Registry:
    def __init__(
        self,
        root: Path | str | None = None,
        *,
        storage: Any = None,
        aliases: AliasStore | None = None,
    ) -> None:
        if storage is None:
            storage = LocalStorage(Path(root).resolve() if root is not None else default_home())
        self.storage = storage
        self.root: Path = storage.root  # local folder (for a remote registry: its cache)
        self.url: str = storage.url
        self.alias_store: AliasStore = aliases or FileAliases(self.root)
        self._metadata: dict[tuple[str, str], ModelMetadata] = {}  # versions are immutable

    # -- reading ---------------------------------------------------------------------------
    def model_dir(self, name: str) -> Path:
        return self.storage.model_dir(name)

    def list_models(self) -> list[str]:
        return self.storage.list_models()

    def list_versions(self, name: str) -> list[str]:
        validate_model_name(name)
        return self.storage.list_versions(name)

    def aliases(self, name: str) -> dict[str, str]:
        return self.alias_store.read(validate_model_name(name))[0]

    def alias_token(self, name: str) -> Any:
        """Changes whenever the aliases of `name` do (cheap: what watchers poll)."""
        return self.alias_store.read(validate_model_name(name))[1]

    def resolve(self, name: str, version_or_alias: str) -> str:
        if version_or_alias in ALIASES:
            target = self.aliases(name).get(version_or_alias)
            if target is None:
                raise VersionNotFoundError(name, version_or_alias, self.list_versions(name))
            return target
        return version_or_alias

    def metadata(self, name: str, version: str) -> ModelMetadata:
        key = (validate_model_name(name), version)
        if key in self._metadata:
            return self._metadata[key]
        raw = self.storage.read_metadata(name, version) if _VERSION_RE.match(version) else None
        if raw is None:
            raise VersionNotFoundError(name, version, self.list_versions(name))
        try:
            meta = ModelMetadata.model_validate_json(raw)
        except (ValidationError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise CorruptVersionError(name, version, METADATA_FILE, first) from exc
        if self.storage.url != str(self.root):  # remote: immutable, so cache it
            self._metadata[key] = meta
        return meta

    def get(self, name: str, version: str = "production") -> ModelVersion:
        """A version's metadata and where its files are (or will be, once `verify` fetched
        them) on this machine."""
        version = self.resolve(name, version)
        meta = self.metadata(name, version)
        return ModelVersion(name, version, self.model_dir(name) / version, meta)

    def verify(self, name: str, version: str = "production") -> ModelVersion:
        """Fetch the version's files to this machine if needed and re-hash every one; raise
        `CorruptVersionError` naming the first bad file."""
        mv = self.get(name, version)
        path, checked = self.storage.fetch(name, mv.version, mv.metadata.files)
        if not checked:  # a fresh download was checked before it entered the cache
            check_files(name, mv.version, path, mv.metadata.files)
        return ModelVersion(name, mv.version, path, mv.metadata)

    # -- writing ---------------------------------------------------------------------------
    def stage(self, name: str) -> Staging:
        """Create a private staging folder on this machine; its version id is fixed now."""
        folder = self.storage.staging_root(validate_model_name(name))
        folder.mkdir(parents=True, exist_ok=True)
        self.clean_staging(name)
        version = new_version_id()
        path = folder / f"{_STAGING_PREFIX}{version}.{os.getpid()}"
        path.mkdir()
        return Staging(name, version, path)

    def discard(self, staging: Staging) -> None:
        shutil.rmtree(staging.path, ignore_errors=True)

    def publish(self, staging: Staging, metadata: ModelMetadata) -> ModelVersion:
        """Hash every file, then make the version exist: all or nothing."""
        if metadata.name != staging.name or metadata.version != staging.version:
            raise RegistryError(
                f"metadata names {metadata.name}/{metadata.version}, "
                f"staging is {staging.name}/{staging.version}"
            )
        files = {
            p.name: sha256_file(p)
            for p in sorted(staging.path.iterdir())
            if p.is_file() and p.name != METADATA_FILE
        }
        metadata = metadata.model_copy(update={"files": files})
        final = self.storage.publish(staging, metadata.model_dump_json(indent=2).encode())
        return ModelVersion(staging.name, staging.version, final, metadata)

    def _move_aliases(self, name: str, change) -> dict[str, str]:
        """Apply `change(current) -> new | None` by compare-and-set, retrying on conflict:
        concurrent promotions are applied one after the other, never interleaved."""
        for _ in range(50):
            current, token = self.alias_store.read(name)
            updated = change(current)
            if updated is None or updated == current:
                return current
            if self.alias_store.compare_and_set(name, token, updated):
                return updated
            time.sleep(0.01)
        raise RegistryError(f"the aliases of {name!r} kept changing under this promotion; retry")

    def promote(self, name: str, version: str, *, verify: bool = True) -> dict[str, str]:
        """Make `version` production; the old production becomes `previous`. With
        `verify=False` (the registry is unreachable) only the id's form is checked: replicas
        still verify every file before they load it, and keep serving until they can."""
        version = self.resolve(name, version)
        if verify:
            self.verify(name, version)
        elif not _VERSION_RE.match(version):
            raise VersionNotFoundError(name, version, [])

        def change(aliases: dict[str, str]) -> dict[str, str] | None:
            current = aliases.get("production")
            if current == version:
                return None
            return {
                "production": version,
                **({"previous": current} if current else {}),
                **_challengers(aliases, version),
            }

        return self._move_aliases(validate_model_name(name), change)

    def shadow(self, name: str, version: str, *, alias: str = "shadow") -> dict[str, str]:
        """Load `version` beside production under `alias`: `shadow` scores live traffic
        (it answers nobody), `canary` answers a share of it; replaces an earlier one."""
        version = self.resolve(name, version)
        self.verify(name, version)

        def change(aliases: dict[str, str]) -> dict[str, str] | None:
            if aliases.get("production") in (None, version):
                raise RegistryError(
                    f"{name}/{version} cannot be the {alias}: it is production, or there is"
                    " no production version to compare with; promote it instead"
                )
            other = "canary" if alias == "shadow" else "shadow"
            if aliases.get(other) == version:
                raise RegistryError(f"{name}/{version} is the {other} already; stop that first")
            return {**aliases, alias: version}

        return self._move_aliases(validate_model_name(name), change)

    def end_shadow(
        self,
        name: str,
        version: str,
        *,
        promote: bool,
        alias: str = "shadow",
        against: str | None = None,
    ) -> dict[str, str] | None:
        """Promote the `alias` (shadow or canary) `version` or drop it; None when it is no
        longer that alias (another replica decided first, or an operator moved it)."""
        done: list[dict[str, str]] = []

        def change(aliases: dict[str, str]) -> dict[str, str] | None:
            done.clear()
            if aliases.get(alias) != version:
                return None
            if against is not None and aliases.get("production") != against:
                return None  # production moved since it was compared with
            rest = {k: v for k, v in aliases.items() if k != alias}
            if promote:
                rest = {
                    "production": version,
                    "previous": aliases["production"],
                    **_challengers(rest, version),
                }
            done.append(rest)
            return rest

        self._move_aliases(validate_model_name(name), change)
        return done[0] if done else None

    def rollback(self, name: str) -> dict[str, str]:
        """Swap `production` and `previous` (a second rollback undoes the first)."""
        validate_model_name(name)
        checked: set[str] = set()

        def change(aliases: dict[str, str]) -> dict[str, str]:
            previous = aliases.get("previous")
            if previous is None:
                raise RegistryError(
                    f"model {name!r} has no previous version to roll back to; "
                    "promote a version explicitly instead"
                )
            if previous not in checked:
                self.verify(name, previous)
                checked.add(previous)
            return {
                "production": previous,
                "previous": aliases["production"],
                **_challengers(aliases, previous),
            }

        return self._move_aliases(name, change)

    def delete_model(self, name: str) -> list[str]:
        """Remove every alias, then every version of `name` (replicas stop serving it once
        the aliases are gone); returns the versions removed."""
        validate_model_name(name)
        self._move_aliases(name, lambda aliases: {} if aliases else None)
        removed = []
        for version in self.list_versions(name):
            self.storage.remove(name, version)
            removed.append(version)
        return removed

    def delete(self, name: str, version: str) -> None:
        aliased = {v: k for k, v in self.aliases(name).items()}
        if version in aliased:
            raise RegistryError(
                f"version {version!r} of {name!r} is aliased as {aliased[version]!r}; "
                "promote or roll back first"
            )
        if version not in self.list_versions(name):
            raise VersionNotFoundError(name, version, self.list_versions(name))
        self.storage.remove(name, version)

    def prune(self, name: str, keep_last: int) -> list[str]:
        """Delete all but the newest `keep_last` versions, never an aliased one."""
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        keep = set(self.aliases(name).values())
        versions = self.list_versions(name)
        keep.update(versions[-keep_last:])
        removed = []
        for version in (v for v in versions if v not in keep):
            if version in self.aliases(name).values():  # aliased meanwhile: kept
                continue
            self.storage.remove(name, version)
            removed.append(version)
        return removed

    def prune_cache(self, name: str, keep: set[str]) -> list[str]:
        """Remove this machine's cached copies of versions outside `keep` (remote only)."""
        return self.storage.prune_cache(name, keep)

    def clean_staging(self, name: str) -> list[str]:
        """Remove staging folders left by a dead process (or older than 6 h): what a
        SIGKILLed trainer leaves behind. Never touches a live process's staging. On a
        remote registry, also versions whose upload never finished (no metadata)."""
        folder = self.storage.staging_root(validate_model_name(name))
        cutoff = time.time() - _STALE_STAGING_S
        removed = []
        for p in folder.glob(f"{_STAGING_PREFIX}*") if folder.is_dir() else []:
            owner = p.suffix[1:]
            dead = owner.isdigit() and not pid_alive(int(owner))
            with contextlib.suppress(OSError):
                if dead or p.stat().st_mtime < cutoff:
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
        return removed + self.storage.clean_incomplete(name)


def _challengers(aliases: dict[str, str], production: str) -> dict[str, str]:
    """The shadow and canary kept across a change of production (unless it is them)."""
    return {k: v for k in ("shadow", "canary") if (v := aliases.get(k)) and v != production}


def check_files(name: str, version: str, path: Path, files: dict[str, str]) -> None:
    for file, expected in sorted(files.items()):
        target = path / file
        if not target.is_file():
            raise CorruptVersionError(name, version, file, "missing")
        actual = sha256_file(target)
        if actual != expected:
            raise CorruptVersionError(
                name, version, file, f"sha256 {actual[:12]}… != recorded {expected[:12]}…"
            )


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists on this host (None/0: no)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
