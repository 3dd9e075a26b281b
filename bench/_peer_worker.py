"""Runs inside the peers' own virtualenv (bench/.venv-peers): SetFit, a plain Hugging Face
`Trainer`, and a `transformers` pipeline. One JSON line per call on stdout. Not imported by
Refit; never downloads anything (local backbone folder, no `evaluate.load`)."""

from __future__ import annotations

import csv
import json
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def emit(record):
    record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    sys.stdout.write("RESULT " + json.dumps(record) + "\n")


def setfit_run(backbone, train_csv, test_csv, max_steps, out_dir):
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    texts, labels = read(train_csv)
    test_texts, test_labels = read(test_csv)
    model = SetFitModel.from_pretrained(backbone)
    args = TrainingArguments(
        output_dir=out_dir,  # SetFit checkpoints; never the working directory
        batch_size=16,
        num_epochs=1,
        max_steps=max_steps,
        seed=0,
        report_to="none",
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"text": texts, "label": labels})
    )
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    pred = list(model.predict(test_texts))
    acc = sum(p == y for p, y in zip(pred, test_labels, strict=True)) / len(test_labels)
    emit(
        {
            "peer": "setfit",
            "max_steps": max_steps,
            "train_s": round(train_s, 1),
            "test_accuracy": round(acc, 6),
            "train_examples": len(texts),
        }
    )


def setfit_multilabel_run(backbone, train_jsonl, test_jsonl, max_steps, out_dir, tune_jsonl):
    """SetFit's multi-label head (one-vs-rest): at its default threshold (0.5), and with
    per-label thresholds tuned on `tune_jsonl` (held-out rows Refit never sees: generous to
    SetFit); macro-F1 over the labels present in test, micro-F1, subset accuracy."""
    import numpy as np
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    from sklearn.metrics import f1_score

    def load(path):
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        return [r["text"] for r in rows], [r["labels"] for r in rows]

    texts, sets = load(train_jsonl)
    test_texts, test_sets = load(test_jsonl)
    labels = sorted({x for s in sets for x in s})
    hot = [[int(x in s) for x in labels] for s in sets]
    model = SetFitModel.from_pretrained(backbone, multi_target_strategy="one-vs-rest")
    args = TrainingArguments(
        output_dir=out_dir,
        batch_size=16,
        num_epochs=1,
        max_steps=max_steps,
        seed=0,
        report_to="none",
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"text": texts, "label": hot})
    )
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start

    def probabilities(texts):
        out = model.predict_proba(texts)
        out = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
        return np.asarray(out, dtype=float)

    def matrix(sets):
        return np.asarray([[int(x in s) for x in labels] for s in sets])

    tune_texts, tune_sets = load(tune_jsonl)
    y_tune, p_tune = matrix(tune_sets), probabilities(tune_texts)
    grid = np.arange(0.05, 0.951, 0.05)
    tuned = np.array(
        [
            grid[
                int(
                    np.argmax(
                        [f1_score(y_tune[:, j], p_tune[:, j] >= t, zero_division=0) for t in grid]
                    )
                )
            ]
            for j in range(len(labels))
        ]
    )
    y = matrix(test_sets)
    p_test = probabilities(test_texts)
    present = y.sum(0) > 0

    def scores(pred, prefix):
        per_label = f1_score(y, pred, average=None, zero_division=0)
        return {
            f"{prefix}macro_f1": round(float(per_label[present].mean()), 6),
            f"{prefix}micro_f1": round(
                float(f1_score(y, pred, average="micro", zero_division=0)), 6
            ),
            f"{prefix}subset_accuracy": round(float((y == pred).all(1).mean()), 6),
        }

    default = np.asarray(model.predict(test_texts), dtype=int)
    emit(
        {
            "peer": "setfit_multilabel",
            "max_steps": max_steps,
            "train_s": round(train_s, 1),
            **scores(default, "default_threshold_test_"),
            **scores((p_test >= tuned).astype(int), "test_"),
            "thresholds": "per label, tuned on dev-A",
            "train_examples": len(texts),
        }
    )


def trainer_run(backbone, train_csv, test_csv, epochs, out_dir):
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    texts, labels = read(train_csv)
    test_texts, test_labels = read(test_csv)
    classes = sorted(set(labels))
    ids = {c: i for i, c in enumerate(classes)}
    tok = AutoTokenizer.from_pretrained(backbone)
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone, num_labels=len(classes), id2label=dict(enumerate(classes)), label2id=ids
    )

    def encode(batch):
        return tok(batch["text"], truncation=True, max_length=64)

    train_ds = Dataset.from_dict({"text": texts, "label": [ids[y] for y in labels]}).map(
        encode, batched=True
    )
    args = TrainingArguments(
        output_dir=out_dir + "/ckpt",
        per_device_train_batch_size=32,
        learning_rate=5e-5,
        num_train_epochs=epochs,
        warmup_ratio=0.1,
        weight_decay=0.01,
        save_strategy="no",
        report_to=[],
        seed=0,
        logging_steps=50,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tok)
    )
    start = time.perf_counter()
    out = trainer.train()
    train_s = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(test_texts), 64):
            enc = tok(
                test_texts[i : i + 64],
                truncation=True,
                max_length=64,
                padding=True,
                return_tensors="pt",
            )
            pred = model(**enc).logits.argmax(-1).numpy()
            correct += int(np.sum(pred == np.asarray([ids[y] for y in test_labels[i : i + 64]])))
    trainer.save_model(out_dir + "/model")
    tok.save_pretrained(out_dir + "/model")
    emit(
        {
            "peer": "hf_trainer",
            "epochs": epochs,
            "train_s": round(train_s, 1),
            "samples_per_s": round(
                out.metrics.get("train_samples_per_second", len(texts) * epochs / train_s), 1
            ),
            "test_accuracy": round(correct / len(test_texts), 6),
            "train_examples": len(texts),
        }
    )


def init_classifier(backbone, labels, out_dir):
    """An untrained classification head on the backbone: the same compute as a fine-tuned
    one, for timing the pipeline without training first."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=labels)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(backbone).save_pretrained(out_dir)
    emit({"model_dir": out_dir})


def pipeline_run(model_dir, test_csv, n):
    from transformers import pipeline

    texts, _ = read(test_csv)
    clf = pipeline("text-classification", model=model_dir, tokenizer=model_dir, device=-1)
    clf(texts[:8])
    out = {"peer": "transformers_pipeline"}
    for bs, count in ((1, min(n, 256)), (32, n)):
        start = time.perf_counter()
        clf(texts[:count], batch_size=bs, truncation=True)
        out[f"texts_per_s_batch{bs}"] = round(count / (time.perf_counter() - start), 1)
    emit(out)


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    {
        "setfit": lambda a: setfit_run(a[0], a[1], a[2], int(a[3]), a[4]),
        "setfit_multilabel": lambda a: setfit_multilabel_run(
            a[0], a[1], a[2], int(a[3]), a[4], a[5]
        ),
        "trainer": lambda a: trainer_run(a[0], a[1], a[2], int(a[3]), a[4]),
        "pipeline": lambda a: pipeline_run(a[0], a[1], int(a[2])),
        "init_classifier": lambda a: init_classifier(a[0], int(a[1]), a[2]),
    }[cmd](rest)
