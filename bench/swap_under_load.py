"""Model swaps under load: no failed request while versions change.

Starts the service (2 workers), publishes three more versions of its model, then runs
`--concurrency` clients against /predict for `--duration` seconds: the first half idle,
the second half with three promotions and one rollback. Then (unless --quick) a feature
extraction retrain on a few thousand examples runs under the same load.

Checks: zero non-2xx responses; every response names a version that was production at
some moment of the run; no worker answers with an older version after it has answered
with a newer one, except across the rollback. Reports p50/p99 latency idle vs during
swaps vs during the retrain, and how long each swap took to reach every worker.

    python bench/swap_under_load.py [--quick] [--out bench/results/swap_under_load.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve_bench import banking77_texts, first_model_csv, percentile  # noqa: E402
from service.harness.fleet import clone_version  # noqa: E402
from service.harness.server import make_server  # noqa: E402

TOKEN = "swap-bench-token"


@dataclass(frozen=True)
class Response:
    start: float
    end: float
    status: int
    version: str
    worker: str


def load(
    url: str, texts: list[str], concurrency: int, stop: threading.Event, out: list[Response]
) -> None:
    host, port = url.removeprefix("http://").split(":")
    lock = threading.Lock()

    def client(offset: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        i = offset
        while not stop.is_set():
            body = json.dumps({"texts": [texts[i % len(texts)]]})
            i += concurrency
            start = time.monotonic()
            try:
                conn.request("POST", "/predict", body, {"content-type": "application/json"})
                r = conn.getresponse()
                r.read()
                status = r.status
                version = r.getheader("X-Model-Version") or ""
                worker = r.getheader("X-Refit-Worker") or ""
            except (OSError, http.client.HTTPException):
                status, version, worker = 599, "", ""  # connection error: counts as failed
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
            with lock:
                out.append(Response(start, time.monotonic(), status, version, worker))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(60)


def latency(rs: list[Response]) -> dict[str, float | int]:
    lat = [1000 * (r.end - r.start) for r in rs]
    if not lat:
        return {"requests": 0}
    return {
        "requests": len(lat),
        "p50_ms": round(percentile(lat, 50), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "max_ms": round(max(lat), 2),
    }


def check_order(
    responses: list[Response], order: list[str], rollback: tuple[float, str, str] | None
) -> list[str]:
    """Per worker, by completion time: the version index never goes down, except once to
    the rollback's target after the rollback was issued."""
    index = {v: i for i, v in enumerate(order)}
    problems = []
    for worker in sorted({r.worker for r in responses}):
        highest = -1
        rolled_back = False
        for r in sorted((r for r in responses if r.worker == worker), key=lambda r: r.end):
            i = index[r.version]
            if i >= highest:
                highest = i
                continue
            if (
                rollback is not None
                and not rolled_back
                and r.end >= rollback[0]
                and r.version == rollback[2]
                and order[highest] == rollback[1]
            ):
                rolled_back, highest = True, i
                continue
            problems.append(
                f"worker {worker} answered {r.version} after {order[highest]} at t={r.end:.3f}"
            )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run, no retrain phase")
    parser.add_argument("--duration", type=float, default=None, help="idle + swap phases (s)")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--retrain-examples", type=int, default=3000)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "swap_under_load.json"))
    args = parser.parse_args()
    duration = args.duration or (20.0 if args.quick else 60.0)
    concurrency = args.concurrency or (8 if args.quick else 32)

    test_texts = [t for t, _ in banking77_texts("test")]
    tmp = Path(tempfile.mkdtemp(prefix="refit-swap-"))
    rows = banking77_texts("train")
    data_path = first_model_csv(tmp)
    server = make_server(
        tmp,
        REFIT_DEFAULT_DATA=str(data_path),
        REFIT_API_TOKEN=TOKEN,
        REFIT_SWAP_POLL_S="1.0",
        REFIT_TRAINER_THREADS="1",
    )
    server.start()
    admin = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
    )
    result: dict = {}
    try:
        v0 = admin.get("/models").json()["production"]
        clones = [clone_version(server.home) for _ in range(3)]
        order = [v0, *clones]
        responses: list[Response] = []
        stop = threading.Event()
        t0 = time.monotonic()
        loader = threading.Thread(
            target=load, args=(server.url, test_texts, concurrency, stop, responses)
        )
        loader.start()
        time.sleep(2.0)  # warm-up, not measured
        idle_from = time.monotonic()
        time.sleep(duration / 2)
        swap_from = time.monotonic()
        events = []
        schedule = [
            ("promote", clones[0], 0.10),
            ("promote", clones[1], 0.35),
            ("promote", clones[2], 0.60),
            ("rollback", clones[1], 0.85),
        ]
        for kind, target, at in schedule:
            time.sleep(max(0.0, swap_from + at * duration / 2 - time.monotonic()))
            issued = time.monotonic()
            if kind == "promote":
                r = admin.post("/models/promote", json={"version": target})
            else:
                r = admin.post("/models/rollback")
            assert r.status_code == 200, r.text
            assert r.json()["production"] == target
            events.append({"kind": kind, "version": target, "t": issued})
        time.sleep(max(0.0, swap_from + duration / 2 - time.monotonic()))
        swap_to = time.monotonic()

        retrain: dict = {"skipped": "quick mode"} if args.quick else {}
        if not args.quick:
            by_class: dict[str, list[str]] = {}
            for t, y in rows:
                by_class.setdefault(y, []).append(t)
            per = max(2, args.retrain_examples // len(by_class))
            examples = [
                {"text": t, "label": y} for y, ts in sorted(by_class.items()) for t in ts[:per]
            ]
            r = admin.post(
                "/retrain/submit",
                json={
                    "examples": examples,
                    "strategy": "feature_extraction",
                    "mode": "replace",
                    "promote": "never",
                },
            )
            assert r.status_code == 200, r.text
            job_id = r.headers["X-Refit-Job-Id"]
            job_from = time.monotonic()
            while True:
                job = admin.get(f"/jobs/{job_id}").json()
                if job["state"] not in ("queued", "running"):
                    break
                time.sleep(0.5)
            job_to = time.monotonic()
            retrain = {
                "examples": len(examples),
                "state": job["state"],
                "seconds": round(job_to - job_from, 1),
                "trainer_threads": 1,
            }
        stop.set()
        loader.join(120)
    finally:
        admin.close()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    measured = [r for r in responses if r.start >= idle_from]
    idle = [r for r in measured if r.end < swap_from]
    swaps = [r for r in measured if swap_from <= r.start and r.end <= swap_to]
    failed = [r for r in measured if not 200 <= r.status < 300]
    unknown = sorted({r.version for r in measured if r.status == 200} - set(order))
    rollback = (events[-1]["t"], clones[2], clones[1])
    order_problems = check_order([r for r in measured if r.status == 200], order, rollback)
    workers = sorted({r.worker for r in measured if r.worker})
    reach = []
    for e in events:
        firsts = [
            min(
                (
                    r.end
                    for r in measured
                    if r.worker == w and r.version == e["version"] and r.end >= e["t"]
                ),
                default=None,
            )
            for w in workers
        ]
        done = None if None in firsts else round(max(firsts) - e["t"], 3)  # type: ignore[type-var]
        reach.append({"kind": e["kind"], "version": e["version"], "all_workers_after_s": done})
    if not args.quick:
        during = [r for r in measured if job_from <= r.start and r.end <= job_to]
        retrain["latency"] = latency(during)
        idle_p99 = latency(idle).get("p99_ms")
        if idle_p99 and retrain["latency"].get("p99_ms"):
            retrain["p99_vs_idle"] = round(retrain["latency"]["p99_ms"] / idle_p99, 2)
    result = {
        "benchmark": "swap_under_load",
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "concurrency": concurrency,
        "duration_s": duration,
        "workers": len(workers),
        "versions": order,
        "events": [{**e, "t": round(e["t"] - t0, 3)} for e in events],
        "swap_reached_all_workers": reach,
        "requests": len(measured),
        "non_2xx": len(failed),
        "unknown_versions": unknown,
        "order_violations": order_problems[:20],
        "latency_idle": latency(idle),
        "latency_during_swaps": latency(swaps),
        "retrain_under_load": retrain,
        "client": "stdlib http.client, keep-alive, one thread per client, same machine",
    }
    result["ok"] = not failed and not unknown and not order_problems and len(workers) == 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
