"""The shared data sets (`../shared/data`, or $REFIT_SHARED), read the same way by tests
and benchmarks; never copied into the repository."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    return Path(os.environ.get("REFIT_SHARED") or REPO.parent / "shared").resolve()


BANKING77 = shared_dir() / "data" / "banking77"


def read_shared(dataset: str, split: str) -> list[tuple[str, str]]:
    """`text,label` rows of a shared data set (Banking77 calls its label `category`)."""
    path = shared_dir() / "data" / dataset / f"{split}.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset} not found at {path}; set REFIT_SHARED to the shared folder"
        )
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        column = "category" if "category" in (reader.fieldnames or []) else "label"
        return [(row["text"], row[column]) for row in reader]


def read_banking77(split: str) -> list[tuple[str, str]]:
    return read_shared("banking77", split)


def banking77_slice(
    split: str, classes: list[str], per_class: int | None, seed: int = 0
) -> list[tuple[str, str]]:
    rows = [r for r in read_banking77(split) if r[1] in classes]
    if per_class is None:
        return rows
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    for c in classes:
        members = [r for r in rows if r[1] == c]
        rng.shuffle(members)
        out.extend(members[:per_class])
    return out
