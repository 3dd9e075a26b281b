"""Where versions live: names and ids, a version's files on a folder (`LocalStorage`:
staging, fsync, atomic renames), and aliases in a file (`FileAliases`, for a registry used
as a library). `models._s3.S3Storage` is the same interface on a bucket.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from models._errors import InvalidModelNameError, RegistryError
from models._faults import failpoint
from models._metadata import ModelMetadata

METADATA_FILE = "metadata.json"
ALIASES_FILE = "aliases.json"
ALIASES = ("production", "previous", "shadow", "canary")
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
        """The fp32 graph: the reference every metric and parity check is about."""
        return self.path / "model.onnx"

    def graph_path(self, *, cuda: bool, allow_int8: bool = True) -> Path:
        """What to serve: the int8 graph on CPU when the quantization policy chose it, the
        fp16 graph on CUDA when it passed its gate, otherwise `model.onnx`."""
        q, half = self.metadata.quantization, self.metadata.fp16
        if not cuda and allow_int8 and q is not None and q.served_on_cpu and q.file:
            return self.path / q.file
        if cuda and half is not None and half.served_on_cuda and half.file:
            return self.path / half.file
        return self.onnx_path


@dataclass(frozen=True)
class Staging:
    """A private folder to write a version's files into before `Registry.publish`."""

    name: str
    version: str
    path: Path


class AliasStore(Protocol):
    """Where production/previous/shadow live. `read` returns the aliases and a token that changes
    whenever they do; `compare_and_set` writes only if the token is still `expected`."""

    def read(self, name: str) -> tuple[dict[str, str], Any]: ...

    def compare_and_set(self, name: str, expected: Any, aliases: dict[str, str]) -> bool: ...


class FileAliases:
    """`<root>/<name>/aliases.json`, replaced atomically under an flock."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        return self.root / name / ALIASES_FILE

    def read(self, name: str) -> tuple[dict[str, str], Any]:
        path = self._path(name)
        try:
            st = path.stat()
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return {}, None
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{path}: unreadable alias file ({exc})") from exc
        aliases = {k: v for k, v in raw.items() if k in ALIASES and isinstance(v, str)}
        return aliases, (st.st_ino, st.st_mtime_ns, st.st_size)

    def compare_and_set(self, name: str, expected: Any, aliases: dict[str, str]) -> bool:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                if self.read(name)[1] != expected:
                    return False
                _write_atomic(self._path(name), json.dumps(aliases, indent=2).encode())
                return True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


class LocalStorage:
    """Versions in a folder on this machine (one node, or a shared filesystem)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

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

    def read_metadata(self, name: str, version: str) -> bytes | None:
        try:
            return (self.model_dir(name) / version / METADATA_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def fetch(self, name: str, version: str, files: dict[str, str]) -> tuple[Path, bool]:
        """The version's folder on this machine (here: where it lives), and whether its
        files were just checked against `files` (here: never)."""
        return self.model_dir(name) / version, False

    def staging_root(self, name: str) -> Path:
        return self.model_dir(name)

    def publish(self, staging: Staging, metadata_json: bytes) -> Path:
        (staging.path / METADATA_FILE).write_bytes(metadata_json)
        for p in staging.path.iterdir():
            _fsync_path(p)
        _fsync_path(staging.path)
        failpoint("publish")
        final = staging.path.parent / staging.version
        os.rename(staging.path, final)  # atomic; fails rather than overwrite a version
        _fsync_path(final.parent)
        return final

    def remove(self, name: str, version: str) -> None:
        # Rename first so that no reader ever sees a half-deleted version.
        folder = self.model_dir(name)
        trash = folder / f"{_STAGING_PREFIX}deleted-{version}"
        os.rename(folder / version, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def clean_incomplete(self, name: str) -> list[str]:
        return []

    def prune_cache(self, name: str, keep: set[str]) -> list[str]:
        return []  # the folder is the registry, not a cache
