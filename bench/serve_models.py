"""`python bench/serve_bench.py --models N`: N models in one service (mixed traffic,
memory per loaded model, the first request to a cold model). Started from serve_bench.py."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx

from bench.serve_bench import (
    banking77_texts,
    first_model_csv,
    http_throughput,
    percentile,
    worker_rss_mb,
)
from service.harness.server import make_server


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
