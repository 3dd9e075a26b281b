"""Multi-label examples: a text with a *set* of labels (empty: none of them).

`MultiDataset` is the multi-label twin of `models.data.Dataset`, built from the same row
sources (JSON/JSONL `"labels": [...]`, a CSV `labels` column separated by `|`, Python
`(text, [labels])` pairs) with the same text and label checks. Rules, documented in the
README:

- a text seen twice keeps the union of its label sets (`merged` counts those rows);
- an empty set means "none of these" (counted as `none_count`, trained on as a negative);
- at training time, a label on fewer than `MIN_LABEL_ROWS` rows is dropped from every set
  and reported (it cannot be both learned and validated); at least 2 labels must remain;
- label names may not contain `|` (the CSV separator).

In the examples store a label set is one string: `encode_label_set` (a record-separator
mark, then the labels joined by the unit separator: control characters no real label can
hold, so single-label rows never read as sets).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.data import LABEL_SEPARATOR, DataError, LabelList, check_label, check_text

MIN_LABEL_ROWS = 2
NO_LABEL = "(none)"  # an answer with no label, in predicted counts and live traffic
_SET_MARK = "\x1e"
_JOIN = "\x1f"


def encode_label_set(labels: Iterable[str]) -> str:
    """A label set as one stored string (sorted, so equal sets are equal strings)."""
    return _SET_MARK + _JOIN.join(sorted(set(labels)))


def decode_label_set(value: str) -> tuple[str, ...] | None:
    """The set an `encode_label_set` string holds; None for a single label."""
    if not value.startswith(_SET_MARK):
        return None
    body = value[len(_SET_MARK) :]
    return tuple(body.split(_JOIN)) if body else ()


def is_label_set(value: Any) -> bool:
    return isinstance(value, LabelList)


def from_store(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, Any]]:
    """Stored `(text, label)` rows as the data readers take them: a stored label set becomes
    a label list (only rows read back from the store are decoded: a user's label holding
    the mark is a control character, refused)."""
    out: list[tuple[str, Any]] = []
    for text, value in pairs:
        decoded = decode_label_set(value)
        out.append((text, LabelList(list(decoded)) if decoded is not None else value))
    return out


def stored_labels(pairs: Iterable[tuple[str, str]]) -> set[str]:
    """Every label of stored rows (a set's members, or the single labels)."""
    out: set[str] = set()
    for _, value in pairs:
        decoded = decode_label_set(value)
        out.update(decoded if decoded is not None else (value,))
    return out


@dataclass(frozen=True)
class MultiDataset:
    texts: tuple[str, ...]
    label_sets: tuple[tuple[str, ...], ...]
    merged: int = 0  # rows whose text was seen before: their labels joined the first's
    dropped_labels: tuple[str, ...] = field(default=())  # on fewer than MIN_LABEL_ROWS rows

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def classes(self) -> list[str]:
        return sorted({label for labels in self.label_sets for label in labels})

    @property
    def none_count(self) -> int:
        return sum(1 for labels in self.label_sets if not labels)

    def counts(self) -> dict[str, int]:
        """Positive rows per label."""
        return dict(sorted(Counter(x for labels in self.label_sets for x in labels).items()))

    def matrix(self, labels: Sequence[str]) -> np.ndarray:
        """(rows, labels) 0/1 float32, columns in `labels` order (unknown labels ignored)."""
        index = {label: j for j, label in enumerate(labels)}
        y = np.zeros((len(self), len(labels)), dtype=np.float32)
        for i, row in enumerate(self.label_sets):
            for label in row:
                if label in index:
                    y[i, index[label]] = 1.0
        return y

    def pairs(self) -> list[tuple[str, str]]:
        """(text, stored label set) rows, for the examples store."""
        return [(t, encode_label_set(s)) for t, s in zip(self.texts, self.label_sets, strict=True)]

    def sha256(self) -> str:
        canonical = json.dumps(
            sorted(zip(self.texts, [list(s) for s in self.label_sets], strict=True)),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def subset(self, indices: Iterable[int]) -> MultiDataset:
        idx = list(indices)
        return MultiDataset(
            tuple(self.texts[i] for i in idx), tuple(self.label_sets[i] for i in idx)
        )

    def drop_rare(self) -> MultiDataset:
        """Labels on fewer than MIN_LABEL_ROWS rows removed from every set (reported in
        `dropped_labels`): one row can be trained on or validated on, not both."""
        rare = {x for x, n in self.counts().items() if n < MIN_LABEL_ROWS}
        if not rare:
            return self
        sets = tuple(tuple(x for x in s if x not in rare) for s in self.label_sets)
        dropped = tuple(sorted(rare | set(self.dropped_labels)))
        return MultiDataset(self.texts, sets, self.merged, dropped)

    def without(self, label: str) -> MultiDataset:
        """`label` removed from every set (the out-of-scope label: no label at all)."""
        sets = tuple(tuple(x for x in s if x != label) for s in self.label_sets)
        return MultiDataset(self.texts, sets, self.merged, self.dropped_labels)


def _check_labels(where: str, value: Any, problems: list[str]) -> tuple[str, ...] | None:
    if isinstance(value, LabelList) and not isinstance(value.sent, list | tuple):
        problems.append(
            f"{where}: labels must be a list of strings, got {type(value.sent).__name__};"
            ' send ["a", "b"] (or [] for none of them)'
        )
        return None
    if not isinstance(value, list | tuple):
        value = [value]  # a single `label` read as a set of one (task=multi_label)
    before = len(problems)
    out = []
    for label in value:
        checked = check_label(where, label, problems)
        if checked is not None and LABEL_SEPARATOR in checked:
            problems.append(
                f"{where}: label {checked!r} contains {LABEL_SEPARATOR!r}, the label-set"
                " separator; rename it"
            )
        elif checked is not None:
            out.append(checked)
    return tuple(sorted(set(out))) if len(problems) == before else None


def build_multi_dataset(
    rows: Iterable[tuple[str, Any, Any]], *, check_labels: bool = True
) -> MultiDataset:
    """Validate `(where, text, labels)` rows, normalise, merge duplicates, drop rare labels."""
    problems: list[str] = []
    by_text: dict[str, set[str]] = {}
    merged = 0
    for where, text, value in rows:
        checked_text = check_text(where, text, problems)
        labels = _check_labels(where, value, problems)
        if checked_text is None or labels is None:
            continue
        if checked_text in by_text:
            merged += 1
        by_text.setdefault(checked_text, set()).update(labels)
    if problems:
        raise DataError(problems)
    if not by_text:
        raise DataError(["no examples: expected rows of text and labels"])
    texts = tuple(by_text)
    dataset = MultiDataset(texts, tuple(tuple(sorted(by_text[t])) for t in texts), merged)
    if check_labels:
        dataset = dataset.drop_rare()
        check_label_counts(dataset)
    return dataset


def check_label_counts(dataset: MultiDataset) -> None:
    """At least 2 labels on at least MIN_LABEL_ROWS rows each."""
    if len(dataset.classes) < 2:
        dropped = (
            f"; dropped (fewer than {MIN_LABEL_ROWS} rows): {list(dataset.dropped_labels)[:10]}"
            if dataset.dropped_labels
            else ""
        )
        raise DataError(
            [
                f"need at least 2 labels with {MIN_LABEL_ROWS}+ rows each, found"
                f" {len(dataset.classes)} ({dataset.classes}){dropped}; add examples"
            ]
        )


def multi_split(
    dataset: MultiDataset, fraction: float, seed: int
) -> tuple[MultiDataset, MultiDataset]:
    """Train/validation with every label on both sides: labels from the rarest up, each
    takes round(fraction x its rows) (at least 1, at most all but 1) of its rows not yet
    placed into validation, by a seeded hash of the text (as `stratified_split`: order-free,
    stable as data grows); rows left over split by the same hash."""

    def rank(i: int) -> str:
        return hashlib.sha256(f"{seed}:{dataset.texts[i]}".encode()).hexdigest()

    members: dict[str, list[int]] = {}
    for i, labels in enumerate(dataset.label_sets):
        for label in labels:
            members.setdefault(label, []).append(i)
    side: dict[int, str] = {}
    for label in sorted(members, key=lambda x: (len(members[x]), x)):
        rows = sorted(members[label], key=rank)
        want_val = min(max(1, round(fraction * len(rows))), len(rows) - 1)
        have_val = sum(1 for i in rows if side.get(i) == "val")
        for i in rows:
            if i not in side:
                side[i] = "val" if have_val < want_val else "train"
                have_val += side[i] == "val"
    rest = sorted((i for i in range(len(dataset)) if i not in side), key=rank)
    n_val = round(fraction * len(rest))
    for k, i in enumerate(rest):
        side[i] = "val" if k < n_val else "train"
    # rows placed for a rarer label may leave a later label on one side only: move one of
    # its rows across (preferring one whose other labels keep a row on the side it leaves),
    # and repeat while a move left another label one-sided (a few passes settle it)
    for _ in range(8):
        moved = False
        for label in sorted(members, key=lambda x: (len(members[x]), x)):
            rows = sorted(members[label], key=rank)
            for empty, full in (("val", "train"), ("train", "val")):
                if len(rows) < 2 or any(side[i] == empty for i in rows):
                    continue
                movable = [
                    i
                    for i in rows
                    if all(
                        sum(1 for r in members[x] if side[r] == full) > 1
                        for x in dataset.label_sets[i]
                        if x != label
                    )
                ]
                side[(movable or rows)[0]] = empty
                moved = True
        if not moved:
            break
    train = [i for i in range(len(dataset)) if side[i] == "train"]
    val = [i for i in range(len(dataset)) if side[i] == "val"]
    return dataset.subset(train), dataset.subset(val)


def read_label_id_tsv(path: Path, labels_path: Path) -> list[tuple[str, LabelList]]:
    """GoEmotions-style TSV (no header; `text<TAB>label ids<TAB>...`, ids comma-separated,
    indexes into `labels_path`, one name a line) as `(text, labels)` rows. A bad id is a
    DataError naming the line."""
    names = labels_path.read_text(encoding="utf-8").split()
    rows: list[tuple[str, LabelList]] = []
    problems: list[str] = []
    with path.open(newline="", encoding="utf-8") as fh:
        for n, line in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not line or not any(cell.strip() for cell in line):
                continue
            ids = [i for i in line[1].split(",") if i.strip()] if len(line) > 1 else []
            bad = [i for i in ids if not i.strip().isdigit() or int(i) >= len(names)]
            if len(line) < 2 or bad:
                problems.append(
                    f"{path.name} line {n}: expected text<TAB>label ids (0..{len(names) - 1},"
                    f" comma-separated), found {line[1:2]!r}"
                )
                continue
            rows.append((line[0], LabelList([names[int(i)] for i in ids])))
    if problems:
        raise DataError(problems)
    return rows
