"""Scoring a file: rows in, one answer per row out, in chunks that survive a crash.

The one engine behind `refit predict` and `POST /models/{name}/batch` jobs. Input is read
as a stream (CSV with a `text` column, or JSON Lines with a `text` field; an `id` column or
field is carried over, else the row number is the id), so a million-row file never sits in
memory: `chunk_rows` rows at a time are checked, scored and written.

Crash safety: every finished chunk is one file in `<output>.parts/` (written to a temporary
name, fsynced, renamed: a chunk is there whole or not at all), beside a manifest naming the
input, the model version and the options. A run that finds the parts of the same batch
skips the finished chunks (their rows are read, not scored) and scores the rest; only when
every chunk is there is the output assembled (again temporary name + rename) and the parts
removed. A resume assumes the rows before the resume point did not change.

A malformed row (no text, a blank or over-long one, a lone surrogate, bad JSON) is written
to `<output>.errors.jsonl` with its row number and reason, and the batch goes on; with
`on_error="stop"` the batch stops there instead (the finished chunks are kept).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from models._inference import top_labels
from models.data import check_text
from models.text import invalid_character

CHUNK_ROWS = 1000
MAX_ID_CHARS = 1000
FORMATS = ("csv", "jsonl")


class BatchError(ValueError):
    """The batch cannot start or go on; the message says why and what to do."""


class BatchCancelled(RuntimeError):
    """Stopped on request; the finished chunks are kept for a resume."""


@dataclass(frozen=True)
class BatchSpec:
    model: str
    version: str
    source: str  # a path, or "-" for stdin
    output: str
    top_k: int = 1
    chunk_rows: int = CHUNK_ROWS
    on_error: str = "skip"  # or "stop"


@dataclass
class BatchResult:
    rows: int = 0
    scored: int = 0  # rows scored by this run (a resume skips the finished chunks)
    errors: int = 0
    chunks: int = 0
    resumed_chunks: int = 0
    output: str = ""
    errors_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_output(source: str) -> str:
    """`-` for stdin; else `<input without suffix>.predictions.jsonl` beside the input."""
    if source == "-":
        return "-"
    path = Path(source)
    return str(path.with_name(path.stem + ".predictions.jsonl"))


def input_format(path: str, given: str | None = None) -> str:
    """csv or jsonl: `given`, else from the file name (`.csv`; `.jsonl`/`.ndjson`)."""
    if given:
        if given not in FORMATS:
            raise BatchError(f"unknown format {given!r}; use one of {', '.join(FORMATS)}")
        return given
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise BatchError(
        f"cannot tell the format of {path!r} from its name; name it .csv or .jsonl, or pass"
        " --format csv|jsonl (Parquet needs pyarrow, which Refit does not ship)"
    )


@dataclass(frozen=True)
class Row:
    n: int  # row number from 1 (the header is row 0)
    id: str
    text: Any
    problem: str | None = None  # a row that could not be read at all


def read_rows(stream: IO[str], fmt: str) -> Iterator[Row]:
    """The input's rows, one at a time."""
    if fmt == "csv":
        reader = csv.DictReader(stream)
        if reader.fieldnames is None or "text" not in reader.fieldnames:
            raise BatchError(
                f"the CSV header has no `text` column (found {reader.fieldnames or 'none'});"
                " name the column to score `text` (an `id` column is optional)"
            )
        n = 0
        try:
            for n, row in enumerate(reader, start=1):
                yield Row(n, row.get("id") or str(n), row.get("text"))
        except csv.Error as exc:  # e.g. a field over the csv module's size limit
            raise BatchError(f"row {n + 1}: unreadable CSV ({exc}); fix the file") from None
        return
    for n, line in enumerate(stream, start=1):
        if not line.strip():
            yield Row(n, str(n), None, "blank line")
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            yield Row(n, str(n), None, f"not JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(item, dict):
            kind = type(item).__name__
            yield Row(n, str(n), None, f"expected a JSON object with a text field, got {kind}")
            continue
        ident = item.get("id")
        yield Row(n, str(ident) if ident is not None else str(n), item.get("text"))


def answer(model: Any, scored: Any, k: int, row: int, ident: str, top_k: int) -> dict:
    """One output row: as `/predict` answers (label or labels, score, out_of_scope, top)."""
    probs = scored.probabilities[k]
    order = top_labels(probs[None, :], min(top_k, len(model.labels)))[0]
    top = [{"label": model.labels[int(j)], "score": round(float(probs[j]), 6)} for j in order]
    outside = bool(scored.out_of_scope[k])
    out: dict[str, Any] = {"id": ident, "row": row}
    if scored.chosen is not None:
        picked = sorted(np.flatnonzero(scored.chosen[k]).tolist(), key=lambda j: -probs[j])
        out["labels"] = [
            {"label": model.labels[j], "score": round(float(probs[j]), 6)} for j in picked
        ]
    else:
        out["label"] = model.out_of_scope_label if outside else top[0]["label"]
        out["score"] = top[0]["score"]
    out["out_of_scope"] = outside
    out["top"] = top
    return out


def _tmp(path: Path) -> Path:
    """A temporary name beside `path`, private to this process."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = _tmp(path)
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


class Parts:
    """`<output>.parts/` (or `folder`): the manifest and one file per finished chunk.
    `identity` is what makes two runs the same batch (input, its size and modification
    time, format, version, options)."""

    def __init__(self, output: Path, identity: dict[str, Any], folder: Path | None = None) -> None:
        self.dir = folder or output.with_name(output.name + ".parts")
        manifest = self.dir / "manifest.json"
        mine = identity
        if manifest.exists():
            theirs = json.loads(manifest.read_text())
            if theirs != mine:
                changed = sorted(k for k in mine if theirs.get(k) != mine[k])
                raise BatchError(
                    f"{self.dir} holds the parts of another batch (different {', '.join(changed)});"
                    " finish that batch, or delete the folder to start this one afresh (a changed"
                    " input is another batch too)"
                )
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(manifest, json.dumps(mine, indent=1).encode())

    def path(self, index: int, kind: str) -> Path:
        return self.dir / f"{index:07d}.{kind}"

    def done(self, index: int) -> bool:
        return self.path(index, "out").exists()

    def write(self, index: int, rows: list[dict], errors: list[dict]) -> None:
        # the errors first: the .out file is the chunk's commit marker
        _write_atomic(self.path(index, "err"), b"".join(_jsonl(e) for e in errors))
        _write_atomic(self.path(index, "out"), b"".join(_jsonl(r) for r in rows))


def _jsonl(item: dict) -> bytes:
    return (json.dumps(item, ensure_ascii=False) + "\n").encode()


def score_file(
    spec: BatchSpec,
    model: Any,
    *,
    fmt: str | None = None,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    names: tuple[str, str] | None = None,
) -> BatchResult:
    """Score `spec.source` with `model` (a service.loading.LoadedModel) into `spec.output`.
    `-` as source: stdin (not resumable: its parts live in a temporary folder); as output:
    stdout (answers) and stderr (refused rows). `names`: how the manifest names the input
    and output (a job gives them relative to REFIT_BATCH_ROOT, so that any machine that
    mounts the root elsewhere resumes the same batch)."""
    fmt = input_format(spec.source if spec.source != "-" else "x.jsonl", fmt)
    source = None if spec.source == "-" else Path(spec.source)
    if source is not None and not source.is_file():
        raise BatchError(f"no file {spec.source}; give the path of a CSV or JSONL file")
    if (
        source is not None
        and spec.output != "-"
        and source.resolve() == Path(spec.output).resolve()
    ):
        raise BatchError("the output would overwrite the input; choose another output")
    import tempfile

    scratch = (
        Path(tempfile.mkdtemp(prefix="refit-batch-")) if "-" in (spec.source, spec.output) else None
    )
    output = scratch / "out.jsonl" if spec.output == "-" and scratch else Path(spec.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    identity = {
        **{k: v for k, v in asdict(spec).items() if k != "on_error"},
        "format": fmt,
        **({"source": names[0], "output": names[1]} if names else {}),
    }
    if source is not None:
        stat = source.stat()
        identity |= {"input_bytes": stat.st_size, "input_mtime_ns": stat.st_mtime_ns}
    try:
        parts = Parts(output, identity, scratch / "parts" if scratch and source is None else None)
        result = _score(spec, model, fmt, parts, output, stdin, progress, cancel)
        if spec.output == "-":  # answers on stdout, refused rows on stderr
            with output.open(encoding="utf-8") as fh:
                shutil.copyfileobj(fh, stdout or sys.stdout)
            if result.errors_file:
                with open(result.errors_file, encoding="utf-8") as fh:
                    shutil.copyfileobj(fh, sys.stderr)
            result.output, result.errors_file = "-", "stderr" if result.errors else None
        return result
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _score(spec, model, fmt, parts: Parts, output: Path, stdin, progress, cancel) -> BatchResult:
    total = _count_lines(spec.source) if spec.source != "-" else None
    result = BatchResult(output=str(output))
    # undecodable bytes become lone surrogates: that row is refused, not the whole file;
    # a UTF-8 byte-order mark (Excel's "CSV UTF-8") is not part of the header
    if spec.source == "-":
        raw = stdin or io.TextIOWrapper(
            sys.stdin.buffer, encoding="utf-8-sig", errors="surrogateescape", newline=""
        )
        opened: Any = contextlib.nullcontext(raw)
    else:
        opened = open(spec.source, encoding="utf-8-sig", newline="", errors="surrogateescape")  # noqa: SIM115
    with opened as fh:
        chunk: list[Row] = []
        index = 0
        for item in read_rows(fh, fmt):
            chunk.append(item)
            if len(chunk) == spec.chunk_rows:
                _chunk(spec, model, parts, index, chunk, result, cancel)
                index, chunk = index + 1, []
                if progress:
                    progress(result.rows, total)
        if chunk or index == 0:
            _chunk(spec, model, parts, index, chunk, result, cancel)
    if cancel is not None and cancel():  # a job that lost its worker never assembles
        raise BatchCancelled(f"cancelled; the finished chunks are kept in {parts.dir}")
    _assemble(parts, output, result)
    if progress:
        progress(result.rows, result.rows)
    return result


def _chunk(spec, model, parts: Parts, index: int, rows, result: BatchResult, cancel) -> None:
    result.rows += len(rows)
    result.chunks += 1
    if parts.done(index):
        result.resumed_chunks += 1
        return
    if cancel is not None and cancel():
        raise BatchCancelled(
            f"cancelled after {result.rows - len(rows)} rows; the finished chunks are kept in"
            f" {parts.dir} and a new run of the same batch resumes from there"
        )
    good: list[Row] = []
    errors: list[dict] = []
    for row in rows:
        problems = [row.problem] if row.problem else []
        if not problems and (bad := invalid_character(row.id)) is not None:
            problems.append(f"id contains {bad[0]} {bad[1]}")
        elif not problems and len(row.id) > MAX_ID_CHARS:
            problems.append(f"id has {len(row.id)} characters, the limit is {MAX_ID_CHARS}")
        if not problems:
            check_text("", row.text, problems)
        if problems:
            reason = problems[0].removeprefix(": ")
            n = row.n
            if spec.on_error == "stop":
                raise BatchError(
                    f"row {n}: {reason}; stopped (on_error=stop) after {result.rows - len(rows)}"
                    f" rows; the finished chunks are kept in {parts.dir}: run again with"
                    " on_error=skip to record the row and finish (finished chunks are not scored"
                    " again), or fix the file and delete that folder"
                )
            ident = row.id if invalid_character(row.id) is None else None
            errors.append({"row": n, "id": ident, "error": reason})
        else:
            good.append(row)
    out: list[dict] = []
    if good:
        scored = model.score([r.text for r in good])
        out = [answer(model, scored, k, r.n, r.id, spec.top_k) for k, r in enumerate(good)]
    parts.write(index, out, errors)
    result.scored += len(good)


def _assemble(parts: Parts, output: Path, result: BatchResult) -> None:
    """Every chunk is there: the output (and errors file) at once, then no parts."""
    tmp = _tmp(output)
    errors_path = output.with_name(output.name + ".errors.jsonl")
    errors_tmp = _tmp(errors_path)
    with tmp.open("wb") as out, errors_tmp.open("wb") as err:
        for i in range(result.chunks):  # exactly this input's chunks
            with parts.path(i, "out").open("rb") as fh:
                shutil.copyfileobj(fh, out)
            with parts.path(i, "err").open("rb") as fh:
                chunk_errors = fh.read()
            result.errors += chunk_errors.count(b"\n")
            err.write(chunk_errors)
        for fh in (out, err):
            fh.flush()
            os.fsync(fh.fileno())
    tmp.replace(output)
    if result.errors:
        errors_tmp.replace(errors_path)
        result.errors_file = str(errors_path)
    else:
        errors_tmp.unlink()
        errors_path.unlink(missing_ok=True)
    shutil.rmtree(parts.dir, ignore_errors=True)


def _count_lines(path: str) -> int:
    """Lines in the file (a CSV's rows plus its header, if no field spans lines): for the
    progress fraction only; one pass over the bytes, 1 MB at a time."""
    lines = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            lines += block.count(b"\n")
    return lines
