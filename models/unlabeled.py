"""Unlabeled texts (a labeling pool upload): CSV with a `text` column, JSONL objects with a
`text` key, or JSON `{"texts": [...]}`; checked like labeled examples' texts, normalised,
de-duplicated in first-seen order."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

from models.data import DataError, _decode, check_text

_MAX_REPORTED = 20


def parse_texts(data: bytes, fmt: str, source: str = "upload") -> tuple[list[str], int]:
    """The texts of an upload and how many duplicates were dropped; DataError listing (up
    to 20) problems, with where each one is, when any text is unusable."""
    text = _decode(data, source)
    rows = {"csv": _csv, "jsonl": _jsonl, "json": _json}[fmt](text, source)
    problems: list[str] = []
    seen: dict[str, None] = {}
    total = 0
    for where, value in rows:
        total += 1
        clean = check_text(where, value, problems)
        if clean is not None:
            seen.setdefault(clean, None)
        if len(problems) >= _MAX_REPORTED:
            break
    if problems:
        raise DataError(problems)
    if not seen:
        raise DataError([f"{source}: no texts; send at least one"])
    return list(seen), total - len(seen)


def _csv(text: str, source: str) -> Iterable[tuple[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    columns = [h.strip().lower() for h in header or []]
    if "text" not in columns:
        raise DataError(
            [f"{source} line 1: the header must name a `text` column, found {header!r}"]
        )
    ti = columns.index("text")
    for row in reader:
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{source} line {reader.line_num}"
        if len(row) != len(columns):
            raise DataError(
                [
                    f"{where}: expected {len(columns)} fields, found {len(row)}; quote texts with commas"
                ]
            )
        yield where, row[ti]


def _jsonl(text: str, source: str) -> Iterable[tuple[str, Any]]:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source} line {n}"
        try:
            item = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise DataError([f"{where}: invalid JSON ({exc})"]) from None
        if not isinstance(item, Mapping):
            raise DataError([f"{where}: expected an object with `text`, got {type(item).__name__}"])
        yield where, item.get("text")


def _json(text: str, source: str) -> Iterable[tuple[str, Any]]:
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DataError([f"{source}: invalid JSON ({exc})"]) from None
    texts = body.get("texts") if isinstance(body, Mapping) else None
    if not isinstance(texts, list):
        raise DataError([f'{source}: expected {{"texts": ["...", ...]}}'])
    for i, value in enumerate(texts):
        yield f"texts[{i}]", value
