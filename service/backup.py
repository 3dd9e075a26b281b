"""`refit backup DEST` and `refit restore SRC` for the single-node home (SQLite + a folder
registry), safe while the service runs.

A backup is a folder::

    DEST/refit.sqlite             a consistent snapshot (SQLite's online backup API)
    DEST/registry/<name>/<version>/   every published version (immutable: copied as is)
    DEST/manifest.json            what is inside, with the snapshot's sha256

Order matters: the database is snapshotted first, then the registry copied, so every
version the snapshot names (aliases, jobs, shadow) is in the backup — a version is
published before anything points at it. Versions published after the snapshot are copied
too (harmless: unaliased). Both commands build in a `.partial` sibling and rename it into
place last, so a failure leaves nothing half-written. PostgreSQL + S3 fleets back up with
their own tools (pg_dump, bucket versioning): README, 'Backups'.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from models._errors import CorruptVersionError
from models._metadata import ModelMetadata
from models._registry import check_files
from models._storage import (
    _VERSION_RE,
    METADATA_FILE,
    LocalStorage,
    _fsync_path,
    sha256_file,
    validate_model_name,
)

MANIFEST = "manifest.json"
DATABASE = "refit.sqlite"
REGISTRY = "registry"
FORMAT = 1


class BackupError(ValueError):
    """A caller's mistake or an unusable source/destination, with what to do instead."""


def _single_node(settings: Any) -> tuple[Path, Path]:
    if settings.database_url and not settings.database_url.startswith("sqlite"):
        raise BackupError(
            "REFIT_DATABASE_URL is not SQLite: back up PostgreSQL with pg_dump and the S3"
            " registry with bucket versioning (README, 'Backups')"
        )
    if settings.registry_url and settings.registry_url.startswith("s3://"):
        raise BackupError(
            "the registry is on S3: use bucket versioning or a bucket copy (README, 'Backups')"
        )
    database = settings.database
    path = Path(str(database).removeprefix("sqlite:///")) if isinstance(database, str) else database
    return path, settings.registry_root


def _partial(target: Path) -> Path:
    """Where to build: a sibling renamed into place at the end, or, for an existing empty
    folder (a mounted volume, which cannot be replaced), a hidden folder inside it."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target} exists and is not empty: choose a new folder")
    if target.is_dir():
        partial = target / f".partial-{os.getpid()}"
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    return partial


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder, name))
        _fsync_path(Path(folder))


def _finish(partial: Path, target: Path) -> None:
    _fsync_tree(partial)
    if partial.parent == target:  # inside an existing empty folder: move the entries up,
        for entry in sorted(partial.iterdir(), key=lambda p: p.name == MANIFEST):
            os.rename(entry, target / entry.name)  # the manifest last
        partial.rmdir()
    else:
        os.rename(partial, target)


def _snapshot(source: Path, dest: Path) -> None:
    if not source.is_file():
        raise BackupError(f"no store at {source}: is REFIT_HOME right?")
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(dest)
    try:
        # one step: in WAL mode writers go on meanwhile, and a stepped copy would restart
        # at every write of another process (and never end on a busy store)
        src.backup(dst, pages=-1)
        (check,) = dst.execute("PRAGMA integrity_check").fetchone()
        if check != "ok":
            raise BackupError(f"the snapshot of {source} fails SQLite's integrity check: {check}")
    finally:
        dst.close()
        src.close()


def _copy_versions(source: Path, dest: Path) -> dict[str, list[str]]:
    storage = LocalStorage(source)
    copied: dict[str, list[str]] = {}
    for name in storage.list_models():
        for version in storage.list_versions(name):
            folder = source / name / version
            try:
                shutil.copytree(folder, dest / name / version)
            except (FileNotFoundError, shutil.Error):
                shutil.rmtree(dest / name / version, ignore_errors=True)
                continue  # removed (pruned or deleted) while the backup ran
            copied.setdefault(name, []).append(version)
    return copied


def backup(settings: Any, target: Path) -> dict[str, Any]:
    """Snapshot the store and copy the registry into `target` (a new or empty folder)."""
    database, registry = _single_node(settings)
    partial = _partial(target)
    try:
        started = time.monotonic()
        _snapshot(database, partial / DATABASE)
        versions = _copy_versions(registry, partial / REGISTRY)
        manifest = {
            "format": FORMAT,
            "created": time.time(),
            "database_sha256": sha256_file(partial / DATABASE),
            "versions": versions,
            "seconds": round(time.monotonic() - started, 2),
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _finish(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def _read_manifest(source: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(
            f"{source} is not a Refit backup (no readable {MANIFEST}: {exc})"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{source}: not a Refit backup of format {FORMAT}")
    versions = manifest.get("versions")
    if not isinstance(versions, dict) or not (source / DATABASE).is_file():
        raise BackupError(f"{source}: the manifest lists no versions or {DATABASE} is missing")
    for name, ids in versions.items():
        try:
            validate_model_name(name)
        except ValueError as exc:
            raise BackupError(f"{source}: {exc}") from exc
        if not isinstance(ids, list) or not all(_VERSION_RE.match(str(v)) for v in ids):
            raise BackupError(f"{source}: the manifest's versions of {name} are not version ids")
    if sha256_file(source / DATABASE) != manifest.get("database_sha256"):
        raise BackupError(f"{source}/{DATABASE} does not match its manifest: the backup is damaged")
    return manifest


def _check_versions(registry: Path, versions: dict[str, list[str]]) -> None:
    for name, ids in versions.items():
        for version in ids:
            folder = registry / name / version
            try:
                metadata = ModelMetadata.model_validate_json((folder / METADATA_FILE).read_bytes())
                check_files(name, version, folder, metadata.files)
            except (OSError, ValueError, CorruptVersionError) as exc:
                raise BackupError(f"{name}/{version} is damaged in the backup: {exc}") from exc


def restore(settings: Any, source: Path) -> dict[str, Any]:
    """Make a new home from a backup: the store and every version, checked first."""
    database, registry = _single_node(settings)
    manifest = _read_manifest(source)
    _check_versions(source / REGISTRY, manifest["versions"])
    home = database.parent
    if registry != home:
        raise BackupError(
            "restore needs the registry inside REFIT_HOME (unset REFIT_REGISTRY_URL and"
            " REFIT_DATABASE_URL, restore, then move the folders)"
        )
    partial = _partial(home)
    try:
        shutil.copy2(source / DATABASE, partial / DATABASE)
        for name, ids in manifest["versions"].items():
            for version in ids:  # only what was checked
                shutil.copytree(source / REGISTRY / name / version, partial / name / version)
        _finish(partial, home)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest
