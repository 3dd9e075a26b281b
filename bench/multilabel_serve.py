"""Serving a 28-label multi-label model vs a 28-class single-label model, in one service.

Both are trained over HTTP on GoEmotions (feature extraction, fp32 graphs: the same encoder
and head size, so the difference is the answer's shaping: thresholds, label sets) and
served by the same worker through the model pool. Single-text requests at concurrency 1
alternate between the two models in one run, so machine noise hits both alike.

    python bench/multilabel_serve.py [--requests 600]

Writes bench/results/multilabel_serve.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve_bench import first_model_csv, percentile  # noqa: E402
from service.harness.data import goemotions_sample, read_goemotions  # noqa: E402
from service.harness.server import make_server, submit, wait_job  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "multilabel_serve.json"))
    args = parser.parse_args()
    rows = read_goemotions("train")
    multi = goemotions_sample(rows, 8, seed=0)
    single = [(t, ls[0]) for t, ls in rows if len(ls) == 1]
    seen: dict[str, int] = {}
    single_rows = []
    for t, y in single:
        if seen.get(y, 0) < 8:
            seen[y] = seen.get(y, 0) + 1
            single_rows.append({"text": t, "label": y})
    texts = [t for t, _ in read_goemotions("dev")][: args.requests]
    tmp = Path(tempfile.mkdtemp(prefix="refit-bench-ml-"))
    server = make_server(
        tmp,
        REFIT_DEFAULT_DATA=str(first_model_csv(tmp)),
        REFIT_API_TOKEN="",
        REFIT_WORKERS="1",
        REFIT_AUTO_RETRAIN="false",
        REFIT_QUANTIZE="never",
    )
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=600) as c:
            for name, examples in (
                ("single28", single_rows),
                ("multi28", [{"text": t, "labels": ls} for t, ls in multi]),
            ):
                body = {
                    "examples": examples,
                    "model": name,
                    "strategy": "feature_extraction",
                    "promote": "always",
                    "mode": "replace",
                }
                r = submit(c, body)
                assert r.status_code == 200, r.text
                job, _ = wait_job(c, r.headers["X-Refit-Job-Id"], timeout=900)
                assert job["state"] == "succeeded", job
            latency: dict[str, list[float]] = {"single28": [], "multi28": []}
            for name in latency:  # warm: load into the pool
                c.post("/predict", json={"texts": texts[:5], "model": name})
            for i, text in enumerate(texts):
                for name in ("single28", "multi28") if i % 2 else ("multi28", "single28"):
                    started = time.perf_counter()
                    r = c.post("/predict", json={"texts": [text], "model": name})
                    latency[name].append((time.perf_counter() - started) * 1000)
                    assert r.status_code == 200, r.text
    finally:
        server.stop()
    result = {
        "requests_per_model": len(texts),
        "p50_ms_c1": {k: round(percentile(v, 50), 3) for k, v in latency.items()},
        "p99_ms_c1": {k: round(percentile(v, 99), 3) for k, v in latency.items()},
    }
    p50 = result["p50_ms_c1"]
    result["multi_over_single_p50"] = round(p50["multi28"] / p50["single28"], 4)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
