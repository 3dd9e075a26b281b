"""GPU check: fine-tuning speed on CUDA vs CPU, a full Banking77 fine-tuning run, ONNX
inference with the CUDA execution provider. Writes JSON; see bench/gpu_check.sh.

Runs from a checkout with PYTHONPATH=. on a machine with its own torch/transformers/onnx/
onnxruntime and no network: the backbone comes from a local folder
(`refit backbone export-fp16 DIR` makes a small one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def environment() -> dict:
    import onnxruntime as ort
    import torch
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return env


def finetune_speed(
    backbone_dir: Path, texts: list[str], labels: list[str], device: str, examples: int
) -> dict:
    """samples/s of the real fine-tuning loop (training time only) on `examples` texts."""
    import numpy as np
    import torch

    from training.backbone import load_backbone
    from training.classifier import SentenceClassifier
    from training.config import TrainConfig
    from training.finetune import fine_tune

    classes = sorted(set(labels))
    ids = {c: i for i, c in enumerate(classes)}
    backbone = load_backbone(backbone_dir)
    model = SentenceClassifier(backbone.encoder, len(classes))
    cfg = TrainConfig(epochs=1, batch_size=32, patience=5)
    sub_t, sub_y = texts[:examples], np.asarray([ids[y] for y in labels[:examples]])
    result = fine_tune(
        model,
        backbone.tokenizer,
        sub_t,
        sub_y,
        sub_t[:32],
        sub_y[:32],
        cfg,
        torch.device(device),
        time_budget_s=None,
    )
    return {
        "device": device,
        "examples": examples,
        "samples_per_s": result.samples_per_s,
        "autocast": device == "cuda",
    }


def onnx_throughput(model_dir: Path, texts: list[str], provider: str) -> dict:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    if provider not in ort.get_available_providers():
        return {
            "provider": provider,
            "available": False,
            "note": f"{provider} not in {ort.get_available_providers()}",
        }
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), providers=[provider, "CPUExecutionProvider"]
    )
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    used = session.get_providers()[0]

    def run(batch):
        enc = tok.encode_batch(batch)
        feed = {
            "input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64),
        }
        return session.run(["probabilities"], feed)

    out = {"provider": provider, "available": True, "provider_in_use": used}
    for bs in (1, 32, 256):
        n = min(len(texts), 256 if bs == 1 else 3072)
        for i in range(0, min(n, bs * 3), bs):
            run(texts[i : i + bs])
        start = time.perf_counter()
        for i in range(0, n, bs):
            run(texts[i : i + bs])
        out[f"texts_per_s_batch{bs}"] = round(n / (time.perf_counter() - start), 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True, type=Path, help="local backbone folder")
    parser.add_argument(
        "--data", type=Path, default=None, help="folder with Banking77 train.csv and test.csv"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="no CUDA: check that the script runs, on a small slice"
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_check.json")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from models import Registry
    from service.harness.data import shared_dir
    from training import TrainConfig, load_dataset
    from training.pipeline import train

    data_dir = args.data or shared_dir() / "data" / "banking77"
    train_set = load_dataset(data_dir / "train.csv")
    test_set = load_dataset(data_dir / "test.csv")
    env = environment()
    log(json.dumps(env))
    use_cuda = env["cuda_available"] and not args.cpu
    if not use_cuda and not args.cpu:
        log("torch sees no CUDA device: running the CPU path (say so in any report)")
    result: dict = {
        "benchmark": "gpu_check",
        "environment": env,
        "mode": "cuda" if use_cuda else "cpu",
    }

    texts, labels = list(train_set.texts), list(train_set.labels)
    speeds = []
    if use_cuda:
        finetune_speed(args.backbone, texts, labels, "cuda", 256)  # warm-up: CUDA context, kernels
        speeds.append(finetune_speed(args.backbone, texts, labels, "cuda", 2048))
        log(f"cuda fine-tuning: {speeds[-1]}")
    speeds.append(finetune_speed(args.backbone, texts, labels, "cpu", 128 if use_cuda else 64))
    log(f"cpu fine-tuning: {speeds[-1]}")
    result["finetune_speed"] = speeds
    if use_cuda:
        result["cuda_vs_cpu_speedup"] = round(
            speeds[0]["samples_per_s"] / speeds[1]["samples_per_s"], 1
        )

    if not use_cuda:  # a smoke run: 10 classes x 20 examples, one epoch
        keep = set(sorted(set(labels))[:10])
        pairs: list[tuple[str, str]] = []
        for text, label in zip(texts, labels, strict=True):
            if label in keep and sum(1 for _, y in pairs if y == label) < 20:
                pairs.append((text, label))
        train_data = load_dataset(pairs)
        test_data = load_dataset(
            [(t, y) for t, y in zip(test_set.texts, test_set.labels, strict=True) if y in keep]
        )
        epochs = 1
    else:
        train_data, test_data, epochs = train_set, test_set, args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            name="gpu-check",
            strategy="fine_tuning",
            backbone=args.backbone,
            epochs=epochs,
            device="cuda" if use_cuda else "cpu",
            cache_dir=Path(tmp) / "cache",
        )
        started = time.perf_counter()
        run = train(train_data, config, registry=Registry(tmp), test_data=test_data, progress=None)
        wall = time.perf_counter() - started
        meta = run.metadata
        result["finetune_run"] = {
            "data": "banking77 all" if use_cuda else "banking77 10 classes x 20 (smoke)",
            "train_examples": meta.data.train_count,
            "epochs_max": epochs,
            "best_epoch": run.details["fine_tuning"]["best_epoch"],
            "history": run.details["fine_tuning"]["history"],
            "samples_per_s": run.details["fine_tuning"]["samples_per_s"],
            "validation": {"accuracy": meta.metrics.accuracy, "macro_f1": meta.metrics.macro_f1},
            "test": {
                "accuracy": meta.test_metrics.accuracy,
                "macro_f1": meta.test_metrics.macro_f1,
                "count": meta.test_metrics.count,
            },
            "wall_s": round(wall, 1),
            "timings": run.timings,
        }
        log(f"fine-tuning run: {result['finetune_run']}")
        model_dir = Registry(tmp).get("gpu-check", meta.version).path
        test_texts = list(test_set.texts)
        result["onnx_inference"] = [
            onnx_throughput(model_dir, test_texts, "CUDAExecutionProvider"),
            onnx_throughput(model_dir, test_texts, "CPUExecutionProvider"),
        ]
        log(f"onnx inference: {result['onnx_inference']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
