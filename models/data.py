"""Labeled examples in, a validated, normalised, de-duplicated `Dataset` out.

Every problem names where it was found (`line N` for CSV/JSONL, `item N` for JSON lists
and Python pairs) and what to do about it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.text import invalid_character, normalize_text

if TYPE_CHECKING:
    from models.multilabel import MultiDataset

MAX_TEXT_CHARS = 100_000
LABEL_SEPARATOR = "|"  # between the labels of a CSV `labels` cell (multi-label)
MAX_LABEL_CHARS = 200
_MAX_REPORTED = 20
LABEL_COLUMNS = ("label", "category")
# how the data-file messages end: "...; remove it" (kept from before the shared check)
_FIX = {
    "control character": "remove it",
    "lone surrogate": "remove it or send the whole character (valid Unicode)",
}


class DataError(ValueError):
    """The data cannot be trained on; `problems` lists every issue found (first 20)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:_MAX_REPORTED]
        more = len(self.problems) - len(shown)
        text = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
        super().__init__(text)


class LabelList(list):
    """A row's `labels` field as sent (a list for multi-label data; anything else is reported
    by the multi-label checks)."""

    def __init__(self, value: Any) -> None:
        super().__init__(value if isinstance(value, list | tuple) else [])
        self.sent = value


@dataclass(frozen=True)
class Dataset:
    texts: tuple[str, ...]
    labels: tuple[str, ...]
    duplicates_dropped: int = 0
    conflicts: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.labels).items()))

    def sha256(self) -> str:
        """Order-independent: the same examples give the same hash."""
        canonical = json.dumps(
            sorted(zip(self.texts, self.labels, strict=True)), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode()).hexdigest()

    def subset(self, indices: Iterable[int]) -> Dataset:
        idx = list(indices)
        return Dataset(tuple(self.texts[i] for i in idx), tuple(self.labels[i] for i in idx))


def check_text(where: str, text: Any, problems: list[str]) -> str | None:
    """The normalised text, or None with the problem appended."""
    if text is None:
        problems.append(f"{where}: missing text")
    elif not isinstance(text, str):
        problems.append(f"{where}: text must be a string, got {type(text).__name__}")
    elif len(text) > MAX_TEXT_CHARS:
        problems.append(
            f"{where}: text has {len(text)} characters, the limit is {MAX_TEXT_CHARS}; split or trim it"
        )
    elif not normalize_text(text):
        problems.append(f"{where}: empty text")
    elif (bad := invalid_character(text)) is not None:
        problems.append(f"{where}: text contains {bad[0]} {bad[1]}; {_FIX[bad[0]]}")
    else:
        return normalize_text(text)
    return None


def check_label(where: str, label: Any, problems: list[str]) -> str | None:
    """The normalised label, or None with the problem appended."""
    if label is None or (isinstance(label, str) and not label.strip()):
        problems.append(f"{where}: missing label")
    elif not isinstance(label, str):
        problems.append(
            f"{where}: label must be a string, got {type(label).__name__} {label!r}; quote it"
            if isinstance(label, int | float)
            else f"{where}: label must be a string, got {type(label).__name__}"
        )
    elif len(label) > MAX_LABEL_CHARS:
        problems.append(
            f"{where}: label has {len(label)} characters, the limit is {MAX_LABEL_CHARS}"
        )
    elif (bad := invalid_character(label)) is not None:
        problems.append(f"{where}: label contains {bad[0]} {bad[1]}; {_FIX[bad[0]]}")
    else:
        return unicodedata.normalize("NFC", label).strip()
    return None


def _check_row(where: str, text: Any, label: Any, problems: list[str]) -> tuple[str, str] | None:
    checked_text = check_text(where, text, problems)
    checked_label = check_label(where, label, problems)
    if checked_text is None or checked_label is None:
        return None
    return checked_text, checked_label


def check_class_counts(counts: Mapping[str, int]) -> None:
    """At least 2 classes, each with at least 2 examples (one to train on, one to validate)."""
    if len(counts) < 2:
        found = ", ".join(repr(c) for c in counts) or "none"
        raise DataError(
            [
                f"need at least 2 classes, found {len(counts)} ({found}); add examples of other labels"
            ]
        )
    thin = sorted(c for c, n in counts.items() if n < 2)
    if thin:
        raise DataError(
            [
                f"class {c!r} has {counts[c]} example after de-duplication, need at least 2; "
                "add examples or remove the class"
                for c in thin
            ]
        )


def build_dataset(rows: Iterable[tuple[str, Any, Any]], *, check_classes: bool = True) -> Dataset:
    """Validate `(where, text, label)` rows, normalise, drop duplicates and conflicts."""
    problems: list[str] = []
    clean: list[tuple[str, str]] = []
    for where, text, label in rows:
        checked = _check_row(where, text, label, problems)
        if checked is not None:
            clean.append(checked)
    if problems:
        raise DataError(problems)
    if not clean:
        raise DataError(["no examples: expected rows of text and label"])

    labels_by_text: dict[str, set[str]] = {}
    for text, label in clean:
        labels_by_text.setdefault(text, set()).add(label)
    conflicts = sorted(t for t, ls in labels_by_text.items() if len(ls) > 1)
    seen: set[str] = set()
    texts: list[str] = []
    labels: list[str] = []
    duplicates = 0
    for text, label in clean:
        if text in conflicts:
            continue
        if text in seen:
            duplicates += 1
            continue
        seen.add(text)
        texts.append(text)
        labels.append(label)

    if check_classes:
        check_class_counts(Counter(labels))
    return Dataset(tuple(texts), tuple(labels), duplicates, tuple(conflicts))


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            [
                f"{source} line {line}: undecodable bytes at offset {exc.start}; save the file as UTF-8"
            ]
        ) from None


def _csv_rows(
    text: str, source: str, *, extra_columns: bool = True
) -> Iterable[tuple[str, Any, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise DataError([f"{source}: empty file; expected a header `text,label`"])
    columns = [h.strip().lower() for h in header]
    label_col = next((c for c in (*LABEL_COLUMNS, "labels") if c in columns), None)
    if "text" not in columns or label_col is None:
        raise DataError(
            [
                f"{source} line 1: header must name columns `text` and `label` (or `category`;"
                f" `labels` for label sets separated by {LABEL_SEPARATOR!r}), found {header!r}"
            ]
        )
    extra = [h for h, c in zip(header, columns, strict=True) if c not in ("text", label_col)]
    if extra and not extra_columns:
        raise DataError(
            [f"{source} line 1: unexpected column(s) {extra!r}; send only `text` and `label`"]
        )
    ti, li = columns.index("text"), columns.index(label_col)
    for row in reader:
        where = f"{source} line {reader.line_num}"
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            raise DataError(
                [
                    f"{where}: expected {len(columns)} fields, found {len(row)}; quote texts containing commas"
                ]
            )
        if label_col == "labels":  # a label set: `billing|login`, empty: none of them
            yield (
                where,
                row[ti],
                LabelList([x for x in row[li].split(LABEL_SEPARATOR) if x.strip()]),
            )
        else:
            yield where, row[ti], row[li]


def _mapping_row(where: str, item: Mapping[str, Any]) -> tuple[str, Any, Any]:
    """`label`/`category` (one class) or, without them, `labels` (a list: multi-label)."""
    if "labels" in item and "label" not in item and "category" not in item:
        return where, item.get("text"), LabelList(item["labels"])
    label = item.get("label", item.get("category"))
    return where, item.get("text"), label


def _jsonl_rows(text: str, source: str) -> Iterable[tuple[str, Any, Any]]:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source} line {n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError([f"{where}: invalid JSON ({exc.msg})"]) from None
        if not isinstance(item, Mapping):
            raise DataError(
                [f"{where}: expected an object with `text` and `label`, got {type(item).__name__}"]
            )
        yield _mapping_row(where, item)


def _json_rows(text: str, source: str) -> Iterable[tuple[str, Any, Any]]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError([f"{source} line {exc.lineno}: invalid JSON ({exc.msg})"]) from None
    if isinstance(items, Mapping) and "examples" in items:
        items = items["examples"]
    if not isinstance(items, list):
        raise DataError([f"{source}: expected a JSON list of {{text, label}} objects"])
    for n, item in enumerate(items, start=1):
        if not isinstance(item, Mapping):
            raise DataError(
                [
                    f"{source} item {n}: expected an object with `text` and `label`, got {type(item).__name__}"
                ]
            )
        yield _mapping_row(f"{source} item {n}", item)


def parse_bytes(
    data: bytes,
    fmt: str,
    source: str = "data",
    *,
    check_classes: bool = True,
    extra_columns: bool = True,
    task: str = "auto",
) -> Dataset | MultiDataset:
    """Parse uploaded bytes as `csv`, `jsonl` or `json`; `extra_columns=False` refuses CSV
    columns other than text and label. Multi-label data (`labels` lists) is a `MultiDataset`."""
    text = _decode(data, source)
    if fmt == "csv":
        rows = _csv_rows(text, source, extra_columns=extra_columns)
    elif fmt == "jsonl":
        rows = _jsonl_rows(text, source)
    elif fmt == "json":
        rows = _json_rows(text, source)
    else:
        raise DataError([f"unsupported format {fmt!r}: use one of ['csv', 'json', 'jsonl']"])
    return build_examples(rows, check_classes=check_classes, task=task)


def load_dataset(
    source: str | Path | Iterable[tuple[Any, Any]] | Iterable[Mapping[str, Any]],
    *,
    check_classes: bool = True,
    task: str = "auto",
) -> Dataset | MultiDataset:
    """A CSV/JSONL/JSON file (by extension), or Python `(text, label)` pairs or dicts;
    multi-label data (`labels` lists, `task="multi_label"`) is a `MultiDataset`."""
    if isinstance(source, str | Path):
        path = Path(source)
        fmt = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}.get(
            path.suffix.lower()
        )
        if fmt is None:
            raise DataError(
                [f"{path}: unknown file type {path.suffix!r}; use .csv, .jsonl or .json"]
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError([f"{path}: cannot read ({exc.strerror})"]) from None
        return parse_bytes(data, fmt, path.name, check_classes=check_classes, task=task)

    def rows() -> Iterable[tuple[str, Any, Any]]:
        for n, item in enumerate(source, start=1):
            if isinstance(item, Mapping):
                yield _mapping_row(f"item {n}", item)
            elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2:
                label = item[1]
                yield f"item {n}", item[0], LabelList(label) if isinstance(label, list) else label
            else:
                yield f"item {n}", None, None

    return build_examples(rows(), check_classes=check_classes, task=task)


def build_examples(
    rows: Iterable[tuple[str, Any, Any]], *, check_classes: bool = True, task: str = "auto"
) -> Dataset | MultiDataset:
    """Single-label rows make a `Dataset`; rows with label lists (or `task="multi_label"`)
    a `MultiDataset` (models/multilabel.py). Both kinds in one data set is refused, naming
    the rows."""
    from models.multilabel import build_multi_dataset, is_label_set

    rows = list(rows)
    multi = [where for where, _, label in rows if is_label_set(label)]
    if task != "multi_label" and not multi:
        return build_dataset(rows, check_classes=check_classes)
    if task == "single_label":
        raise DataError(
            [f"{multi[0]}: a `labels` list, but task=single_label; send one `label` per row"]
        )
    if task != "multi_label":
        single = [where for where, _, label in rows if not is_label_set(label)]
        if single:
            raise DataError(
                [
                    f"{where}: has one `label` while {multi[0]} has a `labels` list; a data set is"
                    " single-label or multi-label: send `labels` lists on every row (or ask for"
                    " task=multi_label to read a `label` as a set of one)"
                    for where in single
                ]
            )
    return build_multi_dataset(rows, check_labels=check_classes)


def _folded(label: str) -> str:
    return "".join(c for c in label.casefold() if c.isalnum())


def check_out_of_scope_label(counts: Mapping[str, int], label: str) -> None:
    """The classes left once the examples labeled `label` are set aside must be trainable;
    a label that differs from `label` only in case or punctuation is refused (it would
    silently become a class of its own)."""
    near = [c for c in counts if c != label and _folded(c) == _folded(label)]
    if near:
        raise DataError(
            [
                f"label {near[0]!r} looks like the out-of-scope label {label!r} but is not it;"
                f" relabel those examples {label!r}, or set out_of_scope_label to another name"
            ]
        )
    if counts and set(counts) == {label}:
        raise DataError(
            [
                f"all {counts[label]} examples are labeled {label!r} (out of scope): add"
                " examples of the classes the model should answer with"
            ]
        )
    check_class_counts({c: n for c, n in counts.items() if c != label})


def set_aside(dataset: Dataset, label: str) -> tuple[Dataset, Dataset]:
    """(the classes, the out-of-scope examples): examples labeled `label` belong to no class;
    they are kept apart to choose and check the out-of-scope decision."""
    check_out_of_scope_label(dataset.counts(), label)
    inside = [i for i, y in enumerate(dataset.labels) if y != label]
    outside = [i for i, y in enumerate(dataset.labels) if y == label]
    scoped = dataclasses.replace(
        dataset.subset(inside),
        duplicates_dropped=dataset.duplicates_dropped,
        conflicts=dataset.conflicts,
    )
    return scoped, dataset.subset(outside)


def stratified_split(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Per class: at least one validation and one training example.

    Members are ranked by a seeded hash of their text, not shuffled: the split does not
    depend on input order, and an example stays on the same side as its class grows, so a
    champion and a later challenger are compared on examples neither trained on (mostly).
    """
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(dataset.labels):
        by_class.setdefault(label, []).append(i)

    def rank(i: int) -> str:
        return hashlib.sha256(f"{seed}:{dataset.texts[i]}".encode()).hexdigest()

    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=rank)
        n_val = min(max(1, round(fraction * len(members))), len(members) - 1)
        val_idx.extend(members[:n_val])
        train_idx.extend(members[n_val:])
    return dataset.subset(sorted(train_idx)), dataset.subset(sorted(val_idx))
