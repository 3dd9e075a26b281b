"""Registry storage on any S3-compatible object store (`s3://bucket/prefix`), via boto3.

Layout under the prefix is the folder layout: `<name>/<version>/<file>`. Publishing uploads
every file of a version under the version's own key prefix and `metadata.json` last, with
`If-None-Match: *` so a version is written once: until its metadata exists the version does not
exist (listings, `get`, replicas ignore it), and `clean_incomplete` removes what a killed
upload left. S3 has no rename, so there is no separate staging key to copy from: a copy would
double the writes without making the commit point (the metadata write) any more atomic.

Replicas read versions into a local cache (`<cache>/<name>/<version>/`): downloaded once into
a private folder, every sha256 checked, then renamed into place; cached versions that no
alias points to are removed (`prune_cache`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from models._errors import RegistryError, RegistryUnavailable

METADATA_FILE = "metadata.json"
_INCOMPLETE_AFTER_S = 3600  # an upload without metadata older than this is abandoned


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/")."""
    if not url.startswith("s3://") or len(url) <= 5:
        raise ValueError(f"not an s3:// URL: {url!r}; use s3://BUCKET/PREFIX")
    bucket, _, prefix = url[5:].partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3Storage:
    def __init__(self, url: str, cache_dir: Path, *, endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        self.root = cache_dir.resolve()
        self.endpoint_url = endpoint_url
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=Config(
                connect_timeout=3,
                read_timeout=60,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    # -- errors ----------------------------------------------------------------------------
    def _unavailable(self, exc: Exception, what: str) -> RegistryUnavailable:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return RegistryUnavailable(
            f"the registry {self.url} is unavailable while {what} ({detail}); "
            "replicas keep serving what they have cached; retry later"
        )

    def _call(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(what) from exc
            if code in ("PreconditionFailed", "412"):
                raise FileExistsError(what) from exc
            if code == "NoSuchBucket":
                raise RegistryError(
                    f"bucket {self.bucket!r} of REFIT_REGISTRY_URL={self.url} does not exist;"
                    " create it first"
                ) from exc
            raise self._unavailable(exc, what) from exc
        except BotoCoreError as exc:
            raise self._unavailable(exc, what) from exc

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def _keys(self, prefix: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(f"listing {prefix}", self.client.list_objects_v2, **kwargs)
            out.extend(page.get("Contents", []))
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    # -- reading ---------------------------------------------------------------------------
    def model_dir(self, name: str) -> Path:
        from models._storage import validate_model_name

        return self.root / validate_model_name(name)

    def list_models(self) -> list[str]:
        from models._storage import _NAME_RE

        page = self._call(
            "listing models",
            self.client.list_objects_v2,
            Bucket=self.bucket,
            Prefix=self.prefix,
            Delimiter="/",
        )
        names = [
            p["Prefix"][len(self.prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])
        ]
        return sorted(n for n in names if _NAME_RE.match(n))

    def list_versions(self, name: str) -> list[str]:
        from models._storage import _VERSION_RE

        versions = set()
        for obj in self._keys(self._key(name, "")):
            rest = obj["Key"][len(self._key(name, "")) :]
            version, _, file = rest.partition("/")
            if file == METADATA_FILE and _VERSION_RE.match(version):
                versions.add(version)
        return sorted(versions)

    def read_metadata(self, name: str, version: str) -> bytes | None:
        try:
            obj = self._call(
                f"reading {name}/{version}/{METADATA_FILE}",
                self.client.get_object,
                Bucket=self.bucket,
                Key=self._key(name, version, METADATA_FILE),
            )
        except FileNotFoundError:
            return None
        return obj["Body"].read()

    def fetch(self, name: str, version: str, files: dict[str, str]) -> tuple[Path, bool]:
        """Download the version once into the cache, every sha256 checked while it streams
        in and before it becomes visible there; True when this call checked them (a cached
        copy is checked again by the caller)."""
        final = self.model_dir(name) / version
        if final.is_dir():
            return final, False
        tmp = self.model_dir(name) / f".download-{version}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for file, expected in sorted(files.items()):
                self._call(
                    f"downloading {name}/{version}/{file}",
                    self._download_checked,
                    name,
                    version,
                    file,
                    expected,
                    tmp / file,
                )
            os.rename(tmp, final)
        except OSError as exc:  # ENOTEMPTY/EEXIST: another process of this replica was first
            if not final.is_dir():
                raise RegistryError(f"cannot cache {name}/{version} under {final}: {exc}") from exc
            return final, False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final, True

    def _download_checked(
        self, name: str, version: str, file: str, expected: str, target: Path
    ) -> None:
        """One GET, written and hashed in the same pass (no second read of the file)."""
        from botocore.exceptions import ClientError

        from models._errors import CorruptVersionError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(name, version, file))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise CorruptVersionError(name, version, file, "missing") from exc
            raise
        digest = hashlib.sha256()
        with target.open("wb") as fh:
            for chunk in obj["Body"].iter_chunks(1 << 20):
                fh.write(chunk)
                digest.update(chunk)
        actual = digest.hexdigest()
        if actual != expected:
            raise CorruptVersionError(
                name, version, file, f"sha256 {actual[:12]}… != recorded {expected[:12]}…"
            )

    # -- writing ---------------------------------------------------------------------------
    def staging_root(self, name: str) -> Path:
        return self.model_dir(name)

    def publish(self, staging, metadata_json: bytes) -> Path:
        from models._faults import failpoint

        name, version = staging.name, staging.version
        for p in sorted(staging.path.iterdir()):
            if p.is_file() and p.name != METADATA_FILE:
                self._call(
                    f"uploading {name}/{version}/{p.name}",
                    self.client.upload_file,
                    str(p),
                    self.bucket,
                    self._key(name, version, p.name),
                )
        failpoint("publish")
        try:
            self._call(
                f"writing {name}/{version}/{METADATA_FILE}",
                self.client.put_object,
                Bucket=self.bucket,
                Key=self._key(name, version, METADATA_FILE),
                Body=metadata_json,
                IfNoneMatch="*",
                ContentType="application/json",
            )
        except FileExistsError as exc:
            raise RegistryError(f"version {name}/{version} already exists") from exc
        (staging.path / METADATA_FILE).write_bytes(metadata_json)
        final = self.model_dir(name) / version
        try:  # the staged files are this version's cached copy
            os.rename(staging.path, final)
        except OSError:
            return staging.path
        return final

    def _delete(self, keys: list[str], what: str) -> None:
        for i in range(0, len(keys), 1000):
            self._call(
                what,
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )

    def remove(self, name: str, version: str) -> None:
        # metadata first: the version stops existing before any of its files go
        self._call(
            f"deleting {name}/{version}",
            self.client.delete_object,
            Bucket=self.bucket,
            Key=self._key(name, version, METADATA_FILE),
        )
        keys = [o["Key"] for o in self._keys(self._key(name, version, ""))]
        self._delete(keys, f"deleting {name}/{version}")
        shutil.rmtree(self.model_dir(name) / version, ignore_errors=True)

    def clean_incomplete(
        self, name: str, *, older_than_s: float = _INCOMPLETE_AFTER_S
    ) -> list[str]:
        """Delete uploads that never got their metadata (a publisher killed mid-upload)."""
        by_version: dict[str, list[dict[str, Any]]] = {}
        base = self._key(name, "")
        for obj in self._keys(base):
            version, _, file = obj["Key"][len(base) :].partition("/")
            by_version.setdefault(version, []).append(obj)
        cutoff = time.time() - older_than_s
        removed = []
        for version, objs in by_version.items():
            if any(o["Key"].endswith("/" + METADATA_FILE) for o in objs):
                continue
            if max(o["LastModified"].timestamp() for o in objs) > cutoff:
                continue  # maybe still uploading
            self._delete([o["Key"] for o in objs], f"removing the unfinished upload {version}")
            removed.append(version)
        return removed

    def prune_cache(self, name: str, keep: set[str]) -> list[str]:
        from models._storage import _VERSION_RE

        folder = self.model_dir(name)
        removed = []
        for p in folder.iterdir() if folder.is_dir() else []:
            if p.is_dir() and _VERSION_RE.match(p.name) and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed
