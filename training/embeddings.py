"""Sentence embeddings from the frozen encoder, cached on disk by (backbone, text).

The cache is one SQLite file of float32 vectors keyed by the backbone's weights sha256,
max_length and the text's sha256, so a retrain on mostly the same data embeds only what
is new. No pickle: vectors are raw little-endian float32 bytes.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

import numpy as np
import torch

from training.classifier import SentenceClassifier


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class EmbeddingCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS embeddings ("
                " backbone TEXT NOT NULL, max_length INTEGER NOT NULL, text_sha TEXT NOT NULL,"
                " vector BLOB NOT NULL, PRIMARY KEY (backbone, max_length, text_sha))"
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def get_many(
        self, backbone: str, max_length: int, keys: Sequence[str]
    ) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with closing(self._connect()) as db:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT text_sha, vector FROM embeddings WHERE backbone=? AND max_length=? "
                    f"AND text_sha IN ({marks})",
                    [backbone, max_length, *chunk],
                )
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype="<f4")
        return found

    def put_many(self, backbone: str, max_length: int, items: dict[str, np.ndarray]) -> None:
        with closing(self._connect()) as db, db:
            db.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                [(backbone, max_length, k, v.astype("<f4").tobytes()) for k, v in items.items()],
            )


@torch.inference_mode()
def encode(
    model: SentenceClassifier,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Embeddings in input order; batches sorted by length so padding stays small."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.head.in_features), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            vectors = model.embed(batch["input_ids"], batch["attention_mask"])
        out[idx] = vectors.float().cpu().numpy()
        if on_batch is not None:
            on_batch(min(start + batch_size, len(order)), len(order))
    return out


def embed_with_cache(
    model: SentenceClassifier,
    tokenizer,
    texts: Sequence[str],
    *,
    backbone_sha: str,
    max_length: int,
    batch_size: int,
    device: torch.device,
    cache: EmbeddingCache | None,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Returns the embeddings and stats (cache hits, computed, texts per second)."""
    keys = [text_key(t) for t in texts]
    cached = cache.get_many(backbone_sha, max_length, keys) if cache is not None else {}
    missing = sorted({i for i, k in enumerate(keys) if k not in cached}, key=lambda i: keys[i])
    unique_missing: dict[str, int] = {}
    for i in missing:
        unique_missing.setdefault(keys[i], i)
    todo = list(unique_missing.values())
    started = time.perf_counter()
    computed = (
        encode(
            model,
            tokenizer,
            [texts[i] for i in todo],
            max_length=max_length,
            batch_size=batch_size,
            device=device,
            on_batch=on_batch,
        )
        if todo
        else np.zeros((0, model.head.in_features), dtype=np.float32)
    )
    elapsed = time.perf_counter() - started
    fresh = {keys[i]: computed[j] for j, i in enumerate(todo)}
    if cache is not None and fresh:
        cache.put_many(backbone_sha, max_length, fresh)
    table = {**cached, **fresh}
    vectors = (
        np.stack([table[k] for k in keys])
        if keys
        else np.zeros((0, model.head.in_features), np.float32)
    )
    stats = {
        "cache_hits": float(len(texts) - len(missing)),
        "computed": float(len(todo)),
        "texts_per_s": round(len(todo) / elapsed, 1) if todo and elapsed > 0 else 0.0,
    }
    return vectors, stats
