from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data import build_dataset, parse_bytes, stratified_split
from models.text import invalid_character
from training import DataError, TrainConfig, load_dataset

GOOD = [("hello there", "greet"), ("hi", "greet"), ("bye now", "leave"), ("see you", "leave")]


def problems_of(source) -> list[str]:
    with pytest.raises(DataError) as info:
        load_dataset(source)
    return info.value.problems


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([("   ", "a"), *GOOD], "item 1: empty text"),
        ([("text", ""), *GOOD], "item 1: missing label"),
        ([("text", None), *GOOD], "item 1: missing label"),
        ([(42, "a"), *GOOD], "item 1: text must be a string, got int"),
        ([("text", 3), *GOOD], "item 1: label must be a string, got int 3; quote it"),
        ([("text", {"x": 1}), *GOOD], "item 1: label must be a string, got dict"),
        (
            [("x" * 100_001, "a"), *GOOD],
            "item 1: text has 100001 characters, the limit is 100000; split or trim it",
        ),
        (
            [("a", "x"), ("b", "x")],
            "need at least 2 classes, found 1 ('x'); add examples of other labels",
        ),
        (
            [("solo", "lonely"), *GOOD],
            "class 'lonely' has 1 example after de-duplication, need at least 2",
        ),
        (
            [("hi", "greet"), ("hi ", "greet"), ("bye", "leave"), ("ciao", "leave")],
            "class 'greet' has 1 example after de-duplication",
        ),
        ([], "no examples: expected rows of text and label"),
    ],
)
def test_each_bad_input_has_its_message(rows, expected) -> None:
    assert any(expected in p for p in problems_of(rows)), problems_of(rows)


def test_all_row_problems_are_reported_together() -> None:
    problems = problems_of([("", "a"), ("ok", ""), *GOOD])
    assert problems == ["item 1: empty text", "item 2: missing label"]


def test_normalisation_dedupe_and_conflicts() -> None:
    ds = load_dataset(
        [
            ("Cafe\u0301  au   lait", "drink"),  # NFD + spaces
            ("Café au lait", "drink"),  # the same after NFC + whitespace: dropped
            ("tea", "drink"),
            ("water", "drink"),
            ("water", "food"),  # conflicting label: both dropped and reported
            ("bread", "food"),
            ("rice", "food"),
        ]
    )
    assert ds.texts == ("Café au lait", "tea", "bread", "rice")
    assert ds.duplicates_dropped == 1
    assert ds.conflicts == ("water",)
    assert ds.counts() == {"drink": 2, "food": 2}


def test_hash_ignores_order() -> None:
    assert load_dataset(GOOD).sha256() == load_dataset(list(reversed(GOOD))).sha256()
    assert load_dataset(GOOD).sha256() != load_dataset(GOOD[:3] + [("later", "leave")]).sha256()


def test_csv_accepts_category_column_and_reports_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,category\nhello there,greet\nhi,greet\n"bye, now",leave\n,leave\n')
    assert problems_of(path) == ["d.csv line 5: empty text"]
    path.write_text(
        'text,category,extra\nhello there,greet,1\nhi,greet,2\n"bye, now",leave,3\nlater,leave,4\n'
    )
    assert load_dataset(path).counts() == {"greet": 2, "leave": 2}


def test_csv_without_header_and_ragged_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("hello,greet\nhi,greet\n")
    assert (
        "d.csv line 1: header must name columns `text` and `label` (or `category`;"
        in problems_of(path)[0]
    )
    path.write_text("text,label\nhello,greet,extra\n")
    assert problems_of(path) == [
        "d.csv line 2: expected 2 fields, found 3; quote texts containing commas"
    ]


def test_undecodable_bytes_name_the_line() -> None:
    with pytest.raises(
        DataError, match=r"d.csv line 3: undecodable bytes at offset \d+; save the file as UTF-8"
    ):
        parse_bytes(b"text,label\nhi,greet\nbad \xff\xfe,greet\n", "csv", "d.csv")


def test_jsonl_and_json(tmp_path: Path) -> None:
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        '{"text": "hi", "label": "greet"}\n{"text": "hello", "label": "greet"}\n\n{"text": "bye", "label": "leave"}\n{"text": "ciao", "label": "leave"}\n'
    )
    assert len(load_dataset(jsonl)) == 4
    jsonl.write_text('{"text": "hi", "label": "greet"}\n{"text": "hello", "label": \n')
    assert problems_of(jsonl)[0].startswith("d.jsonl line 2: invalid JSON")
    js = tmp_path / "d.json"
    js.write_text('[{"text": "hi", "label": "greet"}, {"text": "hello", "label": 7}]')
    assert problems_of(js) == ["d.json item 2: label must be a string, got int 7; quote it"]
    assert problems_of(tmp_path / "d.txt")[0].endswith(
        "unknown file type '.txt'; use .csv, .jsonl or .json"
    )


def test_stratified_split_is_seeded_and_keeps_every_class() -> None:
    rows = [(f"text {c} {i}", c) for c in "abc" for i in range(10)]
    train, val = stratified_split(load_dataset(rows), 0.2, seed=1)
    assert val.counts() == {"a": 2, "b": 2, "c": 2}
    assert train.counts() == {"a": 8, "b": 8, "c": 8}
    again_train, again_val = stratified_split(load_dataset(list(reversed(rows))), 0.2, seed=1)
    assert sorted(val.texts) == sorted(again_val.texts)
    tiny_train, tiny_val = stratified_split(load_dataset(rows[:2] + rows[10:12]), 0.2, seed=0)
    assert tiny_val.counts() == {"a": 1, "b": 1} and tiny_train.counts() == {"a": 1, "b": 1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"strategy": "magic"},
            "strategy must be one of ('auto', 'feature_extraction', 'fine_tuning'), got 'magic'",
        ),
        (
            {"validation_fraction": 0.7},
            "validation_fraction must be between 0 and 0.5 (exclusive), got 0.7",
        ),
        ({"epochs": 0}, "epochs must be >= 1 or None, got 0"),
        ({"min_steps": -1}, "min_steps must be >= 0, got -1"),
        ({"max_length": 4}, "max_length must be between 8 and 512, got 4"),
    ],
)
def test_train_config_rejects_bad_values_by_name(kwargs, message) -> None:
    with pytest.raises(ValueError) as info:
        TrainConfig(**kwargs)
    assert str(info.value) == message


def test_control_characters_are_refused_with_their_position() -> None:
    with pytest.raises(DataError) as exc:
        build_dataset([("row 1", "ok\tfine\n", "a"), ("row 2", "bad\x1bescape", "a")])
    assert exc.value.problems == [
        "row 2: text contains control character U+001B at position 3; remove it"
    ]


def test_csv_uploads_can_refuse_extra_columns() -> None:
    data = b"id,text,label\n1,hi,a\n2,ho,a\n"
    assert parse_bytes(data, "csv", "upload", check_classes=False).texts == ("hi", "ho")
    with pytest.raises(DataError) as exc:
        parse_bytes(data, "csv", "upload", extra_columns=False)
    assert exc.value.problems == [
        "upload line 1: unexpected column(s) ['id']; send only `text` and `label`"
    ]


def test_lone_surrogates_in_texts_and_labels_are_refused_where_they_are() -> None:
    with pytest.raises(DataError) as exc:
        build_dataset(
            [
                ("row 1", "a\udfffb", "x"),
                ("row 2", "fine", "y\ud800"),
                ("row 3", "\ud83d\ude00", "z"),
            ]
        )
    assert exc.value.problems == [
        "row 1: text contains lone surrogate U+DFFF at position 1; remove it or send the whole character (valid Unicode)",
        "row 2: label contains lone surrogate U+D800 at position 1; remove it or send the whole character (valid Unicode)",
        "row 3: text contains lone surrogate U+D83D at position 0; remove it or send the whole character (valid Unicode)",
    ]


_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=30)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    rows=st.lists(st.tuples(_ANY_TEXT, _ANY_TEXT), min_size=1, max_size=6),
    fmt=st.sampled_from(["jsonl", "json", "csv"]),
)
def test_any_unicode_in_a_training_file_is_loaded_clean_or_refused_by_line(
    rows: list[tuple[str, str]], fmt: str
) -> None:
    """What `refit train` and uploads read: a Dataset of valid, normalised text, or a
    DataError naming where; never a crash, never a surrogate past this point."""
    items = [{"text": t, "label": y} for t, y in rows]
    if fmt == "jsonl":
        data = "".join(json.dumps(i) + "\n" for i in items).encode()
    elif fmt == "json":
        data = json.dumps(items).encode()
    else:  # raw surrogates in a CSV are invalid UTF-8
        buffer = io.StringIO()
        csv.writer(buffer).writerows([("text", "label"), *rows])
        data = buffer.getvalue().encode("utf-8", "surrogatepass")
    try:
        dataset = parse_bytes(data, fmt, "f.data", check_classes=False)
    except DataError as exc:
        assert exc.problems and all(
            p.startswith("f.data") or p.startswith("no examples") for p in exc.problems
        )
        return
    for value in (*dataset.texts, *dataset.labels):
        value.encode("utf-8")
        assert invalid_character(value) is None and value == value.strip()
