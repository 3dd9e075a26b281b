"""Serving benchmark: the Refit service over HTTP vs raw onnxruntime on the same model,
for the fp32 graph and the int8 graph side by side (CPU).

Measures, in one run on one machine, for each graph:
- latency p50/p99 at concurrency 1 (one text per request), service and raw ORT;
- throughput (texts/s) at concurrency 32 (one text per request, merged by the service's
  batcher), against raw ORT running the same texts in batches of 32 in one process;
- resident memory of every inference worker;
- accuracy and macro-F1 of the graph on the Banking77 test split (held out: the model is
  trained on 8 examples per class of the train split).

    python bench/serve_bench.py [--quick] [--out bench/results/serve_bench.json]
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.harness.server import make_server  # noqa: E402  (one way to start the service)
from service.settings import Settings  # noqa: E402
from service.state import open_state  # noqa: E402


def banking77_texts(split: str) -> list[tuple[str, str]]:
    shared = Path(os.environ.get("REFIT_SHARED") or REPO.parent / "shared")
    with (shared / "data" / "banking77" / f"{split}.csv").open(newline="") as fh:
        return [(r["text"], r["category"]) for r in csv.DictReader(fh)]


def first_model_csv(folder: Path, per_class: int = 8) -> Path:
    """The full Banking77 label set (77 classes), `per_class` each from the train split: a
    realistic head size, quick to train. Written as CSV for REFIT_DEFAULT_DATA."""
    seen: dict[str, int] = {}
    rows = []
    for t, y in banking77_texts("train"):
        if seen.get(y, 0) < per_class:
            seen[y] = seen.get(y, 0) + 1
            rows.append((t, y))
    path = folder / "train.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def raw_session(graph: Path, threads: int):
    """Plain onnxruntime on `graph` with `threads` intra-op threads: run(texts) -> probabilities."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(graph.parent / "tokenizer.json"))

    def run(batch: list[str]) -> np.ndarray:
        enc = tokenizer.encode_batch(batch)
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        return session.run(["probabilities"], {"input_ids": ids, "attention_mask": mask})[0]

    return run


def raw_throughput(graph: Path, texts: list[str], threads: int) -> float:
    """Raw onnxruntime texts/s at batch 32 with all `threads` (the whole machine, as the
    service's workers together)."""
    run = raw_session(graph, threads)
    for i in range(0, 64, 32):
        run(texts[i : i + 32])
    start = time.perf_counter()
    for i in range(0, len(texts), 32):
        run(texts[i : i + 32])
    return len(texts) / (time.perf_counter() - start)


def interleaved_latency(
    url: str, graph: Path, texts: list[str], threads: int
) -> tuple[list[float], list[float]]:
    """Single-text latency (ms) of raw onnxruntime (with the worker's own `threads` = a
    lone request's) and of the service, one call of each in turn on the same text: the
    machine's drift during the run hits both sides alike, so their ratio is what it is
    judged by."""
    run = raw_session(graph, threads)
    conn = _Conn(url)
    for t in texts[:20]:
        run([t])
        conn.predict(t)
    raw, service = [], []
    for t in texts:
        start = time.perf_counter()
        run([t])
        middle = time.perf_counter()
        status = conn.predict(t)
        end = time.perf_counter()
        if status != 200:
            raise RuntimeError(f"predict answered {status}")
        raw.append((middle - start) * 1000)
        service.append((end - middle) * 1000)
    return raw, service


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms_c1": round(percentile(values, 50), 2),
        "p99_ms_c1": round(percentile(values, 99), 2),
    }


def metric_total(metrics: str, prefix: str) -> float:
    return sum(float(x.split()[-1]) for x in metrics.splitlines() if x.startswith(prefix))


class _Conn:
    """A keep-alive HTTP/1.1 connection (stdlib): the load generator shares the 2 cores
    with the service, so it must cost as little CPU per request as possible."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def predict(self, text: str, model: str | None = None) -> int:
        body = {"texts": [text]} if model is None else {"texts": [text], "model": model}
        self.conn.request(
            "POST", "/predict", json.dumps(body), {"content-type": "application/json"}
        )
        response = self.conn.getresponse()
        response.read()
        return response.status


def http_throughput(
    url: str, texts: list[str], concurrency: int, models: list[str | None] | None = None
) -> tuple[float, int, list[float]]:
    """`concurrency` clients, each a thread with its own connection, one text per request
    (to `models[i % len(models)]` for the i-th text when given: mixed traffic)."""
    todo = iter(enumerate(texts))
    lock = threading.Lock()
    errors = 0
    lat: list[float] = []

    def client() -> None:
        nonlocal errors
        conn = _Conn(url)
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            i, text = item
            start = time.perf_counter()
            status = conn.predict(text, models[i % len(models)] if models else None)
            took = (time.perf_counter() - start) * 1000
            with lock:
                lat.append(took)
                errors += status != 200

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(texts) / (time.perf_counter() - start), errors, lat


def worker_rss_mb(launcher_pid: int) -> list[float]:
    out = []
    for p in psutil.Process(launcher_pid).children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            if "_bentoml_impl.worker" in cmd or "service.app" in cmd and "serve" not in cmd:
                out.append(round(p.memory_info().rss / 2**20, 1))
        except psutil.NoSuchProcess:
            pass
    return out


def test_accuracy(graph: Path, labels: list[str]) -> dict[str, float]:
    """Accuracy and macro-F1 of one graph on the whole Banking77 test split."""
    from training.evaluate import OnnxRunner, compute_metrics

    rows = banking77_texts("test")
    runner = OnnxRunner(graph, graph.parent / "tokenizer.json")
    predicted = np.concatenate(
        [runner.predict_proba([t for t, _ in rows[i : i + 64]]) for i in range(0, len(rows), 64)]
    ).argmax(1)
    index = {label: i for i, label in enumerate(labels)}
    m = compute_metrics([index[y] for _, y in rows], predicted, labels, with_confusion=False)
    return {"accuracy": m.accuracy, "macro_f1": m.macro_f1, "examples": m.count}


def measure_service(
    server, graph: Path, texts: list[str], n_latency: int, concurrency: int, threads: int
) -> tuple[dict, dict]:
    """The service (c=1 interleaved with raw onnxruntime, then c=`concurrency`) and the raw
    side of the c=1 phase. The c=1 phase also reads the service's own inference and
    request histograms: how much of a request is the graph run, how much is the rest."""
    before = httpx.get(f"{server.url}/metrics").text
    raw, lat = interleaved_latency(server.url, graph, texts[:n_latency], threads)
    after = httpx.get(f"{server.url}/metrics").text

    def mean_ms(name: str) -> float | None:
        count = metric_total(after, f"{name}_count") - metric_total(before, f"{name}_count")
        total = metric_total(after, f"{name}_sum") - metric_total(before, f"{name}_sum")
        return round(1000 * total / count, 2) if count else None

    tput, errors, lat_c = http_throughput(server.url, texts, concurrency)
    rss = worker_rss_mb(server.proc.pid)
    models = httpx.get(f"{server.url}/models").json()
    metrics = httpx.get(f"{server.url}/metrics").text
    batches = metric_total(metrics, "refit_batch_size_count")
    service = {
        "graph": models["serving"]["graph"],
        **summary(lat),
        "mean_ms_c1": round(float(np.mean(lat)), 2),
        "inside_c1": {  # means over the c=1 phase, from the service's /metrics
            "inference_mean_ms": mean_ms("refit_inference_latency_seconds"),
            "predict_code_mean_ms": mean_ms("refit_request_duration_seconds"),
        },
        f"texts_per_s_c{concurrency}": round(tput, 1),
        f"p50_ms_c{concurrency}": round(percentile(lat_c, 50), 2),
        f"p99_ms_c{concurrency}": round(percentile(lat_c, 99), 2),
        "errors": errors,
        "mean_batch_size": round(metric_total(metrics, "refit_batch_size_sum") / batches, 2)
        if batches
        else None,
        "worker_rss_mb": rss,
    }
    raw_side = {**summary(raw), "mean_ms_c1": round(float(np.mean(raw)), 2)}
    return service, raw_side


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests: a smoke test")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "serve_bench.json"))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--backbone",
        default="minilm",
        help="the first model's encoder (mpnet: installed first; results go to"
        " serve_bench_<name>.json unless --out says otherwise)",
    )
    parser.add_argument(
        "--models",
        type=int,
        default=0,
        help="N > 1: the multi-model benchmark instead (bench/results/serve_bench_models.json)",
    )
    args = parser.parse_args()
    if args.models > 1:
        from bench.serve_models import models_bench

        result = {
            "benchmark": "serve --models",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            **models_bench(args.models, args.quick, 16),
        }
        out = Path(args.out).with_name("serve_bench_models.json")
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    if args.backbone != "minilm" and args.out == parser.get_default("out"):
        args.out = str(Path(args.out).with_name(f"serve_bench_{args.backbone}.json"))
    n_latency = 30 if args.quick else 500
    n_throughput = 128 if args.quick else 3000
    test_texts = [t for t, _ in banking77_texts("test")][:n_throughput]
    tmp = Path(tempfile.mkdtemp(prefix="refit-bench-"))
    data_path = first_model_csv(tmp)
    # the first model is built with both graphs; the service then serves one or the other
    backbone = {"REFIT_BACKBONE": args.backbone}
    if args.backbone != "minilm":  # installed with `refit backbones install`
        backbone["REFIT_BACKBONES"] = args.backbone
    server = make_server(
        tmp,
        REFIT_DEFAULT_DATA=str(data_path),
        REFIT_API_TOKEN="",
        REFIT_THREADS="1",
        REFIT_QUANTIZE="always",
        **backbone,
    )
    graphs: dict[str, dict] = {}
    assert server.env["REFIT_QUANTIZE"] == "always"
    mv = None
    # int8 first: its start trains the first model (with both graphs, REFIT_QUANTIZE=always)
    for name, policy in (("int8", "always"), ("fp32", "never")):
        server.env["REFIT_QUANTIZE"] = policy
        server.env.pop("REFIT_INLINE_MAX_CHARS", None)  # the default
        threads = int(server.env["REFIT_THREADS"])
        server.start()
        try:
            mv = open_state(Settings(home=server.home))[1].get("default", "production")
            graph = mv.graph_path(cuda=False, allow_int8=policy != "never")
            service, raw_c1 = measure_service(
                server, graph, test_texts, n_latency, args.concurrency, threads
            )
        finally:
            server.stop()
        # the same c=1 phase with every request through the batcher's thread (before inline
        # scoring): what scoring a lone request on the event loop buys, in this run
        server.env["REFIT_INLINE_MAX_CHARS"] = "0"
        server.start()
        try:
            raw_hop, lat_hop = interleaved_latency(
                server.url, graph, test_texts[:n_latency], threads
            )
        finally:
            server.stop()
        raw = {
            **raw_c1,
            "texts_per_s_batch32": round(raw_throughput(graph, test_texts, 2), 1),
            "threads": 2,
            "latency_threads": threads,
        }
        tput = service[f"texts_per_s_c{args.concurrency}"]
        hop = {"service": summary(lat_hop), "raw_onnxruntime": summary(raw_hop)}
        hop["p50_c1_service_vs_raw"] = round(
            hop["service"]["p50_ms_c1"] / hop["raw_onnxruntime"]["p50_ms_c1"], 3
        )
        graphs[name] = {
            "file": graph.name,
            "size_mb": round(graph.stat().st_size / 2**20, 1),
            "raw_onnxruntime": raw,
            "service": service,
            "ratios": {
                "p50_c1_service_vs_raw": round(service["p50_ms_c1"] / raw["p50_ms_c1"], 3),
                "p50_c1_service_minus_raw_ms": round(service["p50_ms_c1"] - raw["p50_ms_c1"], 2),
                "throughput_service_vs_raw": round(tput / raw["texts_per_s_batch32"], 3),
            },
            "every_request_through_the_thread": hop,  # REFIT_INLINE_MAX_CHARS=0
            "test": test_accuracy(graph, list(mv.metadata.labels)),
        }
    assert mv is not None
    q = mv.metadata.quantization
    fp32, int8 = graphs["fp32"], graphs["int8"]
    result = {
        "benchmark": "serve",
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "model": {
            "backbone": mv.metadata.backbone.name,
            "labels": len(mv.metadata.labels),
            "version": mv.version,
            "strategy": mv.metadata.strategy,
            "validation_macro_f1": {"fp32": q.fp32_macro_f1, "int8": q.int8_macro_f1}
            if q
            else None,
        },
        "requests": {
            "latency": n_latency,
            "throughput": n_throughput,
            "concurrency": args.concurrency,
        },
        "settings": {
            "workers": 2,
            "ort_threads_per_worker": 1,
            "raw_threads": "1 for single-text latency (as a service worker), 2 for batch-32 throughput",
            "c1": "raw onnxruntime and the service called in turn on each text (interleaved)",
            "client": "stdlib http.client, keep-alive, one thread per concurrent client, same machine",
        },
        "graphs": graphs,
        "int8_vs_fp32": {
            "service_p50_c1": round(int8["service"]["p50_ms_c1"] / fp32["service"]["p50_ms_c1"], 3),
            "service_throughput": round(
                int8["service"][f"texts_per_s_c{args.concurrency}"]
                / fp32["service"][f"texts_per_s_c{args.concurrency}"],
                3,
            ),
            "raw_batch32": round(
                int8["raw_onnxruntime"]["texts_per_s_batch32"]
                / fp32["raw_onnxruntime"]["texts_per_s_batch32"],
                3,
            ),
            "test_accuracy_points": round(
                100 * (int8["test"]["accuracy"] - fp32["test"]["accuracy"]), 2
            ),
        },
        "targets": {
            "int8_p50_ms_c1_le_5": int8["service"]["p50_ms_c1"] <= 5,
            "p50_c1_service_vs_raw_le_1.3": max(
                g["ratios"]["p50_c1_service_vs_raw"] for g in graphs.values()
            )
            <= 1.3,
            "throughput_ratio_ge_1.0": min(
                g["ratios"]["throughput_service_vs_raw"] for g in graphs.values()
            )
            >= 1.0,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
