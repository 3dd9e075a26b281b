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


def read_goemotions(split: str) -> list[tuple[str, list[str]]]:
    """GoEmotions' `train` or `dev` split (its test split is kept aside)."""
    folder = shared_dir() / "data" / "goemotions"
    path = folder / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"goemotions not found at {path}; set REFIT_SHARED")
    from models.multilabel import read_label_id_tsv

    return read_label_id_tsv(path, folder / "labels.txt")


def goemotions_sample(
    rows: list[tuple[str, list[str]]], per_label: int | None, seed: int = 0
) -> list[tuple[str, list[str]]]:
    """A sample with at least `per_label` positives of every label where the data has them
    (labels from the rarest up take rows until they have enough; a row counts for every
    label it carries); None: all rows."""
    if per_label is None:
        return list(rows)
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    counts: dict[str, int] = {}
    for _, labels in rows:
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
    have: dict[str, int] = {}
    chosen: list[int] = []
    taken: set[int] = set()
    for label in sorted(counts, key=lambda x: (counts[x], x)):
        for i in order:
            if have.get(label, 0) >= per_label:
                break
            if i in taken or label not in rows[i][1]:
                continue
            taken.add(i)
            chosen.append(i)
            for x in rows[i][1]:
                have[x] = have.get(x, 0) + 1
    return [rows[i] for i in sorted(chosen)]
