"""A versioned model registry on a plain filesystem.

Layout::

    <root>/<name>/<version>/model.onnx, tokenizer.json, ..., metadata.json
    <root>/<name>/aliases.json        {"production": V, "previous": V}
    <root>/<name>/.staging-<version>.<pid>/ work in progress, never listed

Every change that other processes can observe is one `os.rename`/`os.replace` of something
already complete and fsynced, so a crash at any moment leaves either no version or a complete
one, and readers never see a half-written alias file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from models._errors import (
    CorruptVersionError,
    InvalidModelNameError,
    RegistryError,
    VersionNotFoundError,
)
from models._faults import failpoint
from models._metadata import ModelMetadata

METADATA_FILE = "metadata.json"
ALIASES_FILE = "aliases.json"
ALIASES = ("production", "previous")
_STAGING_PREFIX = ".staging-"
_STALE_STAGING_S = 6 * 3600
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_RE = re.compile(r"^v\d{8}-\d{6}-\d{6}-[0-9a-f]{4}$")


def default_home() -> Path:
    """`$REFIT_HOME`, else `./.refit` (gitignored)."""
    return Path(os.environ.get("REFIT_HOME") or ".refit").resolve()


def validate_model_name(name: str) -> str:
    if not name:
        raise InvalidModelNameError(name, "must not be empty")
    if len(name) > 64:
        raise InvalidModelNameError(name, f"must be at most 64 characters (got {len(name)})")
    if "/" in name or "\\" in name or ".." in name:
        raise InvalidModelNameError(name, "must not contain '/', '\\' or '..'")
    if not _NAME_RE.match(name):
        raise InvalidModelNameError(
            name, "use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return name


def new_version_id(now: datetime | None = None) -> str:
    """Sortable by creation time (UTC, microseconds) and unique (random suffix)."""
    now = now or datetime.now(UTC)
    return f"v{now:%Y%m%d-%H%M%S-%f}-{secrets.token_hex(2)}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path
    metadata: ModelMetadata

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"


@dataclass(frozen=True)
class Staging:
    """A private folder to write a version's files into before `Registry.publish`."""

    name: str
    version: str
    path: Path


class Registry:
    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).resolve() if root is not None else default_home()

    # -- reading ---------------------------------------------------------------------------
    def model_dir(self, name: str) -> Path:
        return self.root / validate_model_name(name)

    def list_models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name))

    def list_versions(self, name: str) -> list[str]:
        folder = self.model_dir(name)
        if not folder.is_dir():
            return []
        return sorted(
            p.name
            for p in folder.iterdir()
            if p.is_dir() and _VERSION_RE.match(p.name) and (p / METADATA_FILE).is_file()
        )

    def aliases(self, name: str) -> dict[str, str]:
        path = self.model_dir(name) / ALIASES_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{path}: unreadable alias file ({exc})") from exc
        return {k: v for k, v in raw.items() if k in ALIASES and isinstance(v, str)}

    def resolve(self, name: str, version_or_alias: str) -> str:
        if version_or_alias in ALIASES:
            target = self.aliases(name).get(version_or_alias)
            if target is None:
                raise VersionNotFoundError(name, version_or_alias, self.list_versions(name))
            return target
        return version_or_alias

    def get(self, name: str, version: str = "production") -> ModelVersion:
        version = self.resolve(name, version)
        path = self.model_dir(name) / version
        if not _VERSION_RE.match(version) or not (path / METADATA_FILE).is_file():
            raise VersionNotFoundError(name, version, self.list_versions(name))
        return ModelVersion(name, version, path, self._read_metadata(name, version, path))

    def verify(self, name: str, version: str = "production") -> ModelVersion:
        """Re-hash every file; raise `CorruptVersionError` naming the first bad file."""
        mv = self.get(name, version)
        for file, expected in sorted(mv.metadata.files.items()):
            target = mv.path / file
            if not target.is_file():
                raise CorruptVersionError(name, mv.version, file, "missing")
            actual = sha256_file(target)
            if actual != expected:
                raise CorruptVersionError(
                    name, mv.version, file, f"sha256 {actual[:12]}… != recorded {expected[:12]}…"
                )
        return mv

    def _read_metadata(self, name: str, version: str, path: Path) -> ModelMetadata:
        try:
            return ModelMetadata.model_validate_json((path / METADATA_FILE).read_bytes())
        except (OSError, ValidationError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise CorruptVersionError(name, version, METADATA_FILE, first) from exc

    # -- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        folder = self.model_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def stage(self, name: str) -> Staging:
        """Create a private staging folder; its version id is fixed now."""
        folder = self.model_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        self.clean_staging(name)
        version = new_version_id()
        path = folder / f"{_STAGING_PREFIX}{version}.{os.getpid()}"
        path.mkdir()
        return Staging(name, version, path)

    def discard(self, staging: Staging) -> None:
        shutil.rmtree(staging.path, ignore_errors=True)

    def publish(self, staging: Staging, metadata: ModelMetadata) -> ModelVersion:
        """Hash, fsync and rename the staging folder into place: all or nothing."""
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
        (staging.path / METADATA_FILE).write_text(metadata.model_dump_json(indent=2))
        for p in staging.path.iterdir():
            _fsync_path(p)
        _fsync_path(staging.path)
        failpoint("publish")
        final = staging.path.parent / staging.version
        os.rename(staging.path, final)  # atomic; fails rather than overwrite a version
        _fsync_path(final.parent)
        return ModelVersion(staging.name, staging.version, final, metadata)

    def promote(self, name: str, version: str) -> dict[str, str]:
        """Make `version` production; the old production becomes `previous`."""
        version = self.resolve(name, version)
        self.verify(name, version)
        with self._locked(name) as folder:
            aliases = self.aliases(name)
            current = aliases.get("production")
            if current == version:
                return aliases
            updated = {"production": version}
            if current is not None:
                updated["previous"] = current
            _write_atomic(folder / ALIASES_FILE, json.dumps(updated, indent=2).encode())
            return updated

    def rollback(self, name: str) -> dict[str, str]:
        """Swap `production` and `previous` (a second rollback undoes the first)."""
        with self._locked(name) as folder:
            aliases = self.aliases(name)
            previous = aliases.get("previous")
            if previous is None:
                raise RegistryError(
                    f"model {name!r} has no previous version to roll back to; "
                    "promote a version explicitly instead"
                )
            self.verify(name, previous)
            updated = {"production": previous, "previous": aliases["production"]}
            _write_atomic(folder / ALIASES_FILE, json.dumps(updated, indent=2).encode())
            return updated

    def delete(self, name: str, version: str) -> None:
        with self._locked(name) as folder:
            aliased = {v: k for k, v in self.aliases(name).items()}
            if version in aliased:
                raise RegistryError(
                    f"version {version!r} of {name!r} is aliased as {aliased[version]!r}; "
                    "promote or roll back first"
                )
            if version not in self.list_versions(name):
                raise VersionNotFoundError(name, version, self.list_versions(name))
            self._remove_version(folder, version)

    def prune(self, name: str, keep_last: int) -> list[str]:
        """Delete all but the newest `keep_last` versions, never an aliased one."""
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        with self._locked(name) as folder:
            keep = set(self.aliases(name).values())
            versions = self.list_versions(name)
            keep.update(versions[-keep_last:])
            removed = [v for v in versions if v not in keep]
            for version in removed:
                self._remove_version(folder, version)
            return removed

    @staticmethod
    def _remove_version(folder: Path, version: str) -> None:
        # Rename first so that no reader ever sees a half-deleted version.
        trash = folder / f"{_STAGING_PREFIX}deleted-{version}"
        os.rename(folder / version, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def clean_staging(self, name: str) -> list[str]:
        """Remove staging folders left by a dead process (or older than 6 h): what a
        SIGKILLed trainer leaves behind. Never touches a live process's staging."""
        folder = self.model_dir(name)
        cutoff = time.time() - _STALE_STAGING_S
        removed = []
        for p in folder.glob(f"{_STAGING_PREFIX}*"):
            owner = p.suffix[1:]
            dead = owner.isdigit() and not pid_alive(int(owner))
            with contextlib.suppress(OSError):
                if dead or p.stat().st_mtime < cutoff:
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
        return removed


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
