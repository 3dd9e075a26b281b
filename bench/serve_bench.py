"""Serving benchmark: the Refit service over HTTP vs raw onnxruntime on the same model.

Measures, in one run on one machine:
- latency p50/p99 at concurrency 1 (one text per request), service and raw ORT;
- throughput (texts/s) at concurrency 32 (one text per request, merged by the service's
  batcher), against raw ORT running the same texts in batches of 32 in one process;
- resident memory of every inference worker.

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

from service.settings import Settings  # noqa: E402
from service.state import open_state  # noqa: E402
from tests.e2e.conftest import make_server  # noqa: E402  (one way to start the service)


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


def raw_ort(model_dir: Path, texts: list[str], threads: int, n_latency: int) -> dict[str, float]:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

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
    start = time.perf_counter()
    for i in range(0, len(texts), 32):
        run(texts[i : i + 32])
    elapsed = time.perf_counter() - start
    return {
        "p50_ms_c1": round(percentile(lat, 50), 2),
        "p99_ms_c1": round(percentile(lat, 99), 2),
        "texts_per_s_batch32": round(len(texts) / elapsed, 1),
        "threads": threads,
    }


class _Conn:
    """A keep-alive HTTP/1.1 connection (stdlib): the load generator shares the 2 cores
    with the service, so it must cost as little CPU per request as possible."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def predict(self, text: str) -> int:
        self.conn.request(
            "POST", "/predict", json.dumps({"texts": [text]}), {"content-type": "application/json"}
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


def http_throughput(url: str, texts: list[str], concurrency: int) -> tuple[float, int, list[float]]:
    """`concurrency` clients, each a thread with its own connection, one text per request."""
    todo = iter(texts)
    lock = threading.Lock()
    errors = 0
    lat: list[float] = []

    def client() -> None:
        nonlocal errors
        conn = _Conn(url)
        while True:
            with lock:
                text = next(todo, None)
            if text is None:
                return
            start = time.perf_counter()
            status = conn.predict(text)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests: a smoke test")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "serve_bench.json"))
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    n_latency = 30 if args.quick else 500
    n_throughput = 128 if args.quick else 3000
    test_texts = [t for t, _ in banking77_texts("test")]
    tmp = Path(tempfile.mkdtemp(prefix="refit-bench-"))
    data_path = first_model_csv(tmp)

    server = make_server(
        tmp, REFIT_DEFAULT_DATA=str(data_path), REFIT_API_TOKEN="", REFIT_THREADS="1"
    )
    server.start()
    try:
        mv = open_state(Settings(home=server.home))[1].get("default", "production")
        raw = raw_ort(mv.path, test_texts[:n_throughput], threads=2, n_latency=n_latency)
        lat = http_latency(server.url, test_texts[:n_latency])
        tput, errors, lat32 = http_throughput(
            server.url, test_texts[:n_throughput], args.concurrency
        )
        rss = worker_rss_mb(server.proc.pid)
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()

    batch_count = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("refit_batch_size_count")
    )
    batch_sum = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("refit_batch_size_sum")
    )
    service = {
        "p50_ms_c1": round(percentile(lat, 50), 2),
        "p99_ms_c1": round(percentile(lat, 99), 2),
        f"texts_per_s_c{args.concurrency}": round(tput, 1),
        f"p50_ms_c{args.concurrency}": round(percentile(lat32, 50), 2),
        f"p99_ms_c{args.concurrency}": round(percentile(lat32, 99), 2),
        "errors": errors,
        "mean_batch_size": round(batch_sum / batch_count, 2) if batch_count else None,
        "worker_rss_mb": rss,
        "workers": 2,
        "ort_threads_per_worker": 1,
        "client": "stdlib http.client, keep-alive, one thread per concurrent client, same machine",
    }
    result = {
        "benchmark": "serve",
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "model": {
            "labels": len(mv.metadata.labels),
            "version": mv.version,
            "strategy": mv.metadata.strategy,
        },
        "requests": {
            "latency": n_latency,
            "throughput": n_throughput,
            "concurrency": args.concurrency,
        },
        "raw_onnxruntime": raw,
        "service": service,
        "ratios": {
            "throughput_service_vs_raw": round(tput / raw["texts_per_s_batch32"], 3),
            "p50_c1_service_minus_raw_ms": round(service["p50_ms_c1"] - raw["p50_ms_c1"], 2),
        },
        "targets": {
            "p50_ms_c1_le_10": service["p50_ms_c1"] <= 10,
            "throughput_ratio_ge_0.7": tput / raw["texts_per_s_batch32"] >= 0.7,
            "worker_rss_le_600mb": bool(rss) and max(rss) <= 600,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
