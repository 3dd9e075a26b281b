"""Multi-label data, thresholds, metrics and the V2 answer: exact values on tiny inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.data import DataError, Dataset, load_dataset, parse_bytes
from models.multilabel import (
    MultiDataset,
    decode_label_set,
    encode_label_set,
    from_store,
    is_label_set,
    multi_split,
)


def test_label_lists_make_a_multi_label_dataset_with_merges_and_empty_sets(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.jsonl"
    rows = [
        {"text": "Billing  and login", "labels": ["billing", "login"]},
        {"text": "billing and login", "labels": ["billing"]},  # not the same text (case)
        {"text": "Billing and login", "labels": ["refund"]},  # the same text: sets merge
        {"text": "hello there", "labels": []},  # none of these
        {"text": "card lost", "labels": ["login", "billing"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_dataset(path, check_classes=False)
    assert isinstance(data, MultiDataset)
    assert data.texts == ("Billing and login", "billing and login", "hello there", "card lost")
    assert data.label_sets[0] == ("billing", "login", "refund")
    assert data.merged == 1 and data.none_count == 1
    assert data.counts() == {"billing": 3, "login": 2, "refund": 1}
    checked = load_dataset(path)  # training's rules: a label on 1 row is dropped, reported
    assert isinstance(checked, MultiDataset)
    assert checked.dropped_labels == ("refund",) and checked.classes == ["billing", "login"]
    assert data.matrix(["login", "billing"]).tolist()[0] == [1.0, 1.0]


def test_csv_labels_column_uses_the_pipe_separator() -> None:
    data = parse_bytes(b"text,labels\nhi,a|b\nho, a \nhu,\nha,b\n", "csv")
    assert isinstance(data, MultiDataset)
    assert data.label_sets == (("a", "b"), ("a",), (), ("b",))


def test_mixing_kinds_names_the_rows_and_task_multi_label_reads_sets_of_one() -> None:
    with pytest.raises(DataError) as caught:
        load_dataset([("a", ["x"]), ("b", "y"), ("c", "z")])
    assert caught.value.problems == [
        f"item {n}: has one `label` while item 1 has a `labels` list; a data set is"
        " single-label or multi-label: send `labels` lists on every row (or ask for"
        " task=multi_label to read a `label` as a set of one)"
        for n in (2, 3)
    ]
    data = load_dataset([("a", "x"), ("b", "y"), ("c", "x"), ("d", "y")], task="multi_label")
    assert isinstance(data, MultiDataset) and data.label_sets == (("x",), ("y",), ("x",), ("y",))
    with pytest.raises(DataError, match="task=single_label"):
        load_dataset([("a", ["x"])], task="single_label")
    assert isinstance(load_dataset([("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")]), Dataset)


def test_bad_label_sets_name_the_row() -> None:
    cases = [
        ({"text": "a", "labels": "x"}, "line 1: labels must be a list of strings, got str"),
        ({"text": "a", "labels": ["x|y"]}, "line 1: label 'x|y' contains '|'"),
        ({"text": "a", "labels": [3]}, "line 1: label must be a string, got int 3"),
        ({"text": "", "labels": ["x"]}, "line 1: empty text"),
    ]
    for row, message in cases:
        with pytest.raises(DataError) as caught:
            parse_bytes(json.dumps(row).encode(), "jsonl", check_classes=False)
        assert message in str(caught.value), (row, str(caught.value))
    with pytest.raises(DataError, match="need at least 2 labels"):
        load_dataset([("a", ["x"]), ("b", ["x"]), ("c", ["y"])])


def test_stored_label_sets_round_trip_and_never_read_as_one_label() -> None:
    stored = encode_label_set(["login", "billing", "login"])
    assert decode_label_set(stored) == ("billing", "login")
    assert decode_label_set(encode_label_set([])) == ()
    assert decode_label_set("billing") is None and not is_label_set("billing")
    rows = from_store([("t1", stored), ("t2", encode_label_set(["billing"]))])
    data = load_dataset(rows, check_classes=False)
    assert isinstance(data, MultiDataset) and data.pairs()[0] == ("t1", stored)
    # only rows read back from the store are decoded: a user's label with the mark is refused
    with pytest.raises(DataError, match="control character U\\+001E"):
        load_dataset([("t1", stored), ("t2", "x")], check_classes=False)
    # a single-label row that also carries a `labels` field stays single-label
    single = load_dataset([{"text": "a", "label": "x", "labels": ["y"]}], check_classes=False)
    assert isinstance(single, Dataset) and single.labels == ("x",)


def test_the_split_puts_every_label_on_both_sides() -> None:
    rows = [(f"text {i}", ["common"] + (["rare"] if i < 2 else [])) for i in range(40)]
    rows += [(f"other {i}", ["mid"]) for i in range(5)]
    data = load_dataset(rows)
    assert isinstance(data, MultiDataset)
    train, val = multi_split(data, 0.1, seed=0)
    assert len(train) + len(val) == len(data)
    for label in data.classes:
        assert label in train.counts() and label in val.counts(), label
    again = multi_split(MultiDataset(data.texts[::-1], data.label_sets[::-1]), 0.1, seed=0)
    assert sorted(again[1].texts) == sorted(val.texts)  # order-free
    # a label whose rows were all placed for rarer labels still gets a row on each side
    tricky = MultiDataset(
        ("r1", "r2", "r3", "r4", "r5", "r6"),
        (("A", "C"), ("A",), ("B", "C"), ("B",), ("D",), ("D",)),
    )
    for seed in range(12):
        train, val = multi_split(tricky, 0.1, seed=seed)
        assert set(train.classes) == set(val.classes) == {"A", "B", "C", "D"}, seed


def test_thresholds_per_label_with_a_global_fallback_for_rare_labels() -> None:
    from training.multilabel_head import choose_thresholds

    # label 0: positives score 0.7+, negatives 0.6 -> any threshold in (0.6, 0.7]
    # label 1: two positives only -> the global threshold
    probs = np.array(
        [[0.7, 0.1], [0.8, 0.9], [0.9, 0.2], [0.75, 0.1], [0.71, 0.1], [0.6, 0.95], [0.6, 0.3]]
    )
    y = np.array([[1, 0], [1, 1], [1, 0], [1, 0], [1, 0], [0, 1], [0, 0]])
    t = choose_thresholds(probs, y, tuned_on="validation")
    assert t.tuned.tolist() == [True, False]
    assert 0.6 < t.values[0] <= 0.7
    assert t.values[1] == t.global_threshold
    assert t.apply(probs)[:, 0].tolist() == [True] * 5 + [False] * 2


def test_multi_label_metrics_exact_values() -> None:
    from training.evaluate import compute_multi_metrics

    y = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 0]])
    chosen = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]], dtype=bool)
    probs = np.array([[0.9, 0.1, 0.4], [0.2, 0.8, 0.1], [0.1, 0.1, 0.1], [0.7, 0.3, 0.6]])
    m = compute_multi_metrics(y, chosen, probs, ["a", "b", "c"])
    assert m.accuracy == 0.5  # rows 2 and 3 exactly right
    assert m.hamming_loss == round(3 / 12, 6)
    # tp 3, fp 1, fn 2 -> micro-F1 6/9; per label: a 1.0, b 2/3, c 0
    assert m.micro_f1 == round(6 / 9, 6)
    assert m.macro_f1 == round((1.0 + 2 / 3 + 0.0) / 3, 6)
    assert m.predicted_counts == {"a": 2, "b": 1, "c": 0, "(none)": 1}
    assert m.per_class["b"].support == 2


def test_paired_bootstrap_keeps_the_challenger_unless_the_probe_is_better_beyond_noise() -> None:
    from training.multilabel_head import paired_bootstrap

    rng = np.random.default_rng(0)
    y = rng.random((200, 4)) < 0.3
    perfect, noisy = y.copy(), y ^ (rng.random((200, 4)) < 0.3)
    assert paired_bootstrap(y, perfect, noisy, seed=0).probe_better
    assert not paired_bootstrap(y, noisy, perfect, seed=0).probe_better
    same = paired_bootstrap(y, noisy, noisy, seed=0)
    assert not same.probe_better and same.delta_ci == (0.0, 0.0)


def test_v2_answers_chosen_labels_for_multi_label_models_only() -> None:
    from models._inference import Scored
    from service import v2

    probs = np.array([[0.9, 0.2, 0.6], [0.1, 0.2, 0.3]], dtype=np.float32)
    chosen = probs >= np.array([0.5, 0.5, 0.5])
    scored = Scored(probs, ~chosen.any(1), chosen)
    request = {"texts": ["x", "y"], "top_k": 1, "outputs": [], "id": None}
    answer = v2.infer_response(request, "m", "v1", ("a", "b", "c"), scored, "out_of_scope")
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"]["data"] == ["a|c", ""]
    assert outputs["chosen"]["data"] == [True, False, True, False, False, False]
    assert outputs["out_of_scope"]["data"] == [False, True]
    single = Scored(probs, np.zeros(2, dtype=bool))
    asked = {**request, "outputs": ["chosen"]}
    with pytest.raises(v2.V2Error, match="multi-label models"):
        v2.infer_response(asked, "m", "v1", ("a", "b", "c"), single, "out_of_scope")
    plain = v2.infer_response(request, "m", "v1", ("a", "b", "c"), single, "out_of_scope")
    assert [o["name"] for o in plain["outputs"]] == ["label", "probabilities", "out_of_scope"]
