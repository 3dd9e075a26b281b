"""What shadow scoring costs production: p50/p99 of /predict with and without a shadow.

Starts the service (2 workers) per shadow fraction, publishes a copy of the production
version (a separate ONNX session, so the shadow does the same work a real challenger
would), and runs `--concurrency` keep-alive clients sending one Banking77 text per request.
Phases alternate — off, on, off, on… — each `--phase` seconds, so that the machine's
noise falls on both sides; the shadow is switched with POST /models/shadow and
/models/shadow/stop. Goal (issue: reliability): production p99 with the shadow on is at
most 1.2× without.

    python bench/shadow_bench.py [--fractions 0.1 1.0] [--phase 15] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.serve_bench import banking77_texts, first_model_csv  # noqa: E402
from bench.swap_under_load import REPO, Response, latency, load  # noqa: E402
from service.harness.fleet import clone_version  # noqa: E402
from service.harness.server import make_server  # noqa: E402

TOKEN = "shadow-bench-token"


def run_fraction(fraction: float, args, texts: list[str]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="refit-shadow-"))
    server = make_server(
        tmp,
        REFIT_DEFAULT_DATA=str(first_model_csv(tmp)),
        REFIT_API_TOKEN=TOKEN,
        REFIT_SHADOW_FRACTION=str(fraction),
        REFIT_AUTO_RETRAIN="false",
    )
    server.start()
    admin = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
    )
    try:
        challenger = clone_version(server.home)
        responses: list[Response] = []
        stop = threading.Event()
        loader = threading.Thread(
            target=load, args=(server.url, texts, args.concurrency, stop, responses)
        )
        loader.start()
        time.sleep(3.0)  # warm-up, not measured
        phases: list[tuple[str, float, float]] = []
        for _ in range(args.rounds):
            for state in ("off", "on"):
                r = admin.post(
                    "/models/shadow" if state == "on" else "/models/shadow/stop",
                    json={"version": challenger} if state == "on" else None,
                )
                assert r.status_code == 200 or (state == "off" and not phases), r.text
                time.sleep(args.swap_wait)  # both workers load or drop the shadow
                start = time.monotonic()
                time.sleep(args.phase)
                phases.append((state, start, time.monotonic()))
        models = admin.get("/models").json()
        stop.set()
        loader.join()
        admin.post("/models/shadow/stop")
    finally:
        server.stop()

    def pick(state: str) -> list[Response]:
        return [r for r in responses for s, a, b in phases if s == state and a <= r.start < b]

    off, on = latency(pick("off")), latency(pick("on"))
    failed = sum(1 for r in responses if r.status != 200)
    return {
        "fraction": fraction,
        "off": off,
        "on": on,
        "p99_ratio_on_vs_off": round(on["p99_ms"] / off["p99_ms"], 3),
        "p50_ratio_on_vs_off": round(on["p50_ms"] / off["p50_ms"], 3),
        "failed_requests": failed,
        "shadow_report_last_phase": models["shadow"]["live"],
        "shadow_latency_one_worker": models["shadow"]["latency_this_worker"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--phase", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--swap-wait", type=float, default=3.0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "shadow_bench.json"))
    args = parser.parse_args()
    texts = [t for t, _ in banking77_texts("test")]
    runs = [run_fraction(f, args, texts) for f in args.fractions]
    result = {
        "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()},
        "settings": {
            "concurrency": args.concurrency,
            "phase_s": args.phase,
            "rounds": args.rounds,
            "workers": 2,
            "texts_per_request": 1,
        },
        "goal": "production p99 with the shadow on <= 1.2x off",
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for run in runs:
        print(  # noqa: T201
            f"fraction {run['fraction']}: p50 {run['off']['p50_ms']} -> {run['on']['p50_ms']} ms,"
            f" p99 {run['off']['p99_ms']} -> {run['on']['p99_ms']} ms"
            f" (x{run['p99_ratio_on_vs_off']}), failed {run['failed_requests']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
