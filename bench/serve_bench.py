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


def raw_ort(
    graph: Path, texts: list[str], threads: int, n_latency: int, latency_threads: int
) -> dict[str, float]:
    """Plain onnxruntime on the same graph: single-text latency with the service worker's
    own session settings (`latency_threads` = REFIT_THREADS: a worker answers a lone request
    with that many threads), throughput at batch 32 with all `threads` (the whole machine,
    as the service's workers together)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    def session_with(n: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = n
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    session = session_with(latency_threads)
    tokenizer = Tokenizer.from_file(str(graph.parent / "tokenizer.json"))

    def run(batch: list[str]) -> np.ndarray:
        enc = tokenizer.encode_batch(batch)
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        return session.run(["probabilities"], {"input_ids": ids, "attention_mask": mask})[0]

    for t in texts[:20]:
        run([t])
    lat = []
    for t in texts[:n_latency]:
        start = time.perf_counter()
        run([t])
        lat.append((time.perf_counter() - start) * 1000)
    session = session_with(threads)
    for i in range(0, 64, 32):
        run(texts[i : i + 32])
    start = time.perf_counter()
    for i in range(0, len(texts), 32):
        run(texts[i : i + 32])
    elapsed = time.perf_counter() - start
    return {
        "p50_ms_c1": round(percentile(lat, 50), 2),
        "p99_ms_c1": round(percentile(lat, 99), 2),
        "texts_per_s_batch32": round(len(texts) / elapsed, 1),
        "threads": threads,
        "latency_threads": latency_threads,
    }


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


def http_latency(url: str, texts: list[str]) -> list[float]:
    conn = _Conn(url)
    for t in texts[:20]:
        conn.predict(t)
    out = []
    for t in texts:
        start = time.perf_counter()
        status = conn.predict(t)
        out.append((time.perf_counter() - start) * 1000)
        if status != 200:
            raise RuntimeError(f"predict answered {status}")
    return out


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


def measure_service(server, texts: list[str], n_latency: int, concurrency: int) -> dict:
    lat = http_latency(server.url, texts[:n_latency])
    tput, errors, lat_c = http_throughput(server.url, texts, concurrency)
    rss = worker_rss_mb(server.proc.pid)
    models = httpx.get(f"{server.url}/models").json()
    metrics = httpx.get(f"{server.url}/metrics").text

    def total(prefix: str) -> float:
        return sum(float(x.split()[-1]) for x in metrics.splitlines() if x.startswith(prefix))

    batches = total("refit_batch_size_count")
    return {
        "graph": models["serving"]["graph"],
        "p50_ms_c1": round(percentile(lat, 50), 2),
        "p99_ms_c1": round(percentile(lat, 99), 2),
        f"texts_per_s_c{concurrency}": round(tput, 1),
        f"p50_ms_c{concurrency}": round(percentile(lat_c, 50), 2),
        f"p99_ms_c{concurrency}": round(percentile(lat_c, 99), 2),
        "errors": errors,
        "mean_batch_size": round(total("refit_batch_size_sum") / batches, 2) if batches else None,
        "worker_rss_mb": rss,
    }


def models_bench(count: int, quick: bool, concurrency: int) -> dict:
    """`count` models in one service (the default one + count-1 trained over HTTP): texts/s
    with one model vs mixed traffic over all, worker memory per loaded model, the first
    request to a cold model (load included) vs a warm one."""
    test_texts = [t for t, _ in banking77_texts("test")][: 300 if quick else 3000]
    tmp = Path(tempfile.mkdtemp(prefix="refit-bench-models-"))
    server = make_server(
        tmp,
        REFIT_DEFAULT_DATA=str(first_model_csv(tmp)),
        REFIT_API_TOKEN="",
        REFIT_WORKERS="1",  # one worker: its memory is the per-model cost
        REFIT_MAX_LOADED_MODELS=str(count),
        REFIT_AUTO_RETRAIN="false",
    )
    server.start()
    try:
        rows = banking77_texts("train")
        labels = sorted({y for _, y in rows})
        names: list[str | None] = [None]
        with httpx.Client(base_url=server.url, timeout=600) as c:
            for k in range(1, count):
                subset = set(labels[(k - 1) * 20 : k * 20])
                seen: dict[str, int] = {}
                examples = []
                for t, y in rows:
                    if y in subset and seen.get(y, 0) < 8:
                        seen[y] = seen.get(y, 0) + 1
                        examples.append({"text": t, "label": y})
                name = f"intents{k}"
                r = c.post(
                    "/retrain/submit",
                    json={"model": name, "examples": examples, "strategy": "feature_extraction"},
                )
                job_id = r.headers["X-Refit-Job-Id"]
                while c.get(f"/jobs/{job_id}").json()["state"] in ("queued", "running"):
                    time.sleep(1)
                names.append(name)
            rss = {"default only": sum(worker_rss_mb(server.proc.pid))}
            cold = {}
            for name in names[1:]:
                start = time.perf_counter()
                assert c.post("/predict", json={"model": name, "texts": ["hi"]}).status_code == 200
                first = (time.perf_counter() - start) * 1000
                warm = []
                for t in test_texts[:50]:
                    start = time.perf_counter()
                    c.post("/predict", json={"model": name, "texts": [t]})
                    warm.append((time.perf_counter() - start) * 1000)
                cold[name] = {
                    "first_request_ms": round(first, 1),
                    "warm_p50_ms": round(percentile(warm, 50), 2),
                }
                rss[f"+ {name}"] = sum(worker_rss_mb(server.proc.pid))
        one, err1, lat1 = http_throughput(server.url, test_texts, concurrency)
        mixed, err3, lat3 = http_throughput(server.url, test_texts, concurrency, names)
    finally:
        server.stop()
    steps = list(rss.values())
    return {
        "models": count,
        "concurrency": concurrency,
        "one_model": {
            "texts_per_s": round(one, 1),
            "p50_ms": round(percentile(lat1, 50), 2),
            "errors": err1,
        },
        "mixed": {
            "texts_per_s": round(mixed, 1),
            "p50_ms": round(percentile(lat3, 50), 2),
            "errors": err3,
        },
        "mixed_vs_one": round(mixed / one, 3),
        "worker_rss_mb": rss,
        "mb_per_extra_model": [round(b - a, 1) for a, b in zip(steps, steps[1:], strict=False)],
        "cold_model": cold,
        "note": "one inference worker (REFIT_WORKERS=1) so its RSS is the per-model cost;"
        " the extra models are 20-intent Banking77 subsets, 8 per class, feature extraction",
    }


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
        server.start()
        try:
            mv = open_state(Settings(home=server.home))[1].get("default", "production")
            graph = mv.graph_path(cuda=False, allow_int8=policy != "never")
            raw = raw_ort(
                graph,
                test_texts,
                threads=2,
                n_latency=n_latency,
                latency_threads=int(server.env["REFIT_THREADS"]),
            )
            service = measure_service(server, test_texts, n_latency, args.concurrency)
        finally:
            server.stop()
        tput = service[f"texts_per_s_c{args.concurrency}"]
        graphs[name] = {
            "file": graph.name,
            "size_mb": round(graph.stat().st_size / 2**20, 1),
            "raw_onnxruntime": raw,
            "service": service,
            "ratios": {
                "throughput_service_vs_raw": round(tput / raw["texts_per_s_batch32"], 3),
                "p50_c1_service_minus_raw_ms": round(service["p50_ms_c1"] - raw["p50_ms_c1"], 2),
            },
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
            "int8_p50_within_1.5ms_of_raw": int8["ratios"]["p50_c1_service_minus_raw_ms"] <= 1.5,
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
