"""Scale-out: how fast a promotion reaches every replica, throughput with 1 vs 2 replicas,
how long a queued job waits for a worker, and promotions under load across replicas.

Starts PostgreSQL, SeaweedFS (S3), two replicas and two `refit worker`s on loopback (the
same launchers as tests/cluster), then:

1. `--promotions` promotions (alternately sent to replica A and B, each version a copy of
   production published to S3 as a trainer would): time from the promote response until
   both replicas answer `/predict` with the new version (each polled every 20 ms);
2. `--clients` keep-alive clients × `--seconds` of `/predict` against A alone, then spread
   over A and B (texts/s; on a 2-core machine expect about 1×: the cores are the limit);
3. `--jobs` small feature-extraction jobs: claim latency = the job's `started_at` minus its
   `created_at` (a worker polls every REFIT_WORKER_POLL_S, 1 s by default);
4. `--load-seconds` of 16 clients across both replicas while 3 promotions and 1 rollback are
   sent alternately to A and B: failed requests, versions outside the production history,
   versions going back (other than across the rollback).

    python bench/cluster_bench.py [--out bench/results/cluster_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve_bench import banking77_texts, percentile  # noqa: E402
from service.harness.cluster import launch_postgres, launch_s3  # noqa: E402
from service.harness.data import banking77_slice, read_banking77  # noqa: E402
from service.harness.fleet import launch_fleet, promotions_under_load  # noqa: E402
from service.harness.server import submit, wait_job  # noqa: E402


def predict_version(client: httpx.Client) -> str:
    return client.post("/predict", json={"texts": ["card payment"]}).json()["version"]


def promotion_times(fleet, n: int) -> list[float]:
    a, b = fleet.replicas["a"], fleet.replicas["b"]
    times = []
    with a.client() as ca, b.client() as cb:
        for i in range(n):
            production = fleet.store().aliases.read("default")[0]["production"]
            version = fleet.copy_version(production)
            target = ca if i % 2 == 0 else cb
            r = target.post("/models/promote", json={"version": version})
            r.raise_for_status()
            t0 = time.monotonic()
            pending = {"a": ca, "b": cb}
            while pending:
                for name, c in list(pending.items()):
                    if predict_version(c) == version:
                        del pending[name]
                if time.monotonic() - t0 > 30:
                    raise RuntimeError(f"promotion {version} not served in 30 s")
                time.sleep(0.02)
            times.append(time.monotonic() - t0)
    return times


def throughput(servers, clients: int, seconds: float, texts: list[str]) -> dict:
    stop = threading.Event()
    latencies: list[float] = []
    failures = [0]

    def run(i: int) -> None:
        srv = servers[i % len(servers)]
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            j = i
            while not stop.is_set():
                t = time.perf_counter()
                r = c.post("/predict", json={"texts": [texts[j % len(texts)]]})
                if r.status_code != 200:
                    failures[0] += 1
                latencies.append(time.perf_counter() - t)
                j += clients

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    ms = sorted(x * 1000 for x in latencies)
    return {
        "replicas": len(servers),
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(latencies),
        "failed": failures[0],
        "texts_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
    }


def claim_latency(fleet, jobs: int) -> list[float]:
    classes = sorted({label for _, label in read_banking77("train")})[:3]
    rows = banking77_slice("train", classes, per_class=5)
    body = {
        "examples": [{"text": t, "label": y} for t, y in rows],
        "strategy": "feature_extraction",
        "promote": "never",
    }
    out = []
    with fleet.replicas["a"].client() as c:
        for _ in range(jobs):
            job_id = submit(c, body).headers["X-Refit-Job-Id"]
            job, _ = wait_job(c, job_id, timeout=600)
            if job["state"] != "succeeded":
                raise RuntimeError(f"job {job_id}: {job}")
            out.append(job["started_at"] - job["created_at"])
    return out


def load_summary(run, seconds: float, clients: int = 16) -> dict:
    return {
        "seconds": seconds,
        "clients": clients,
        "requests": run.requests,
        "failed": len(run.failures),
        "outside_history": sum(v not in run.order for s in run.seen for v in s),
        "clients_out_of_order": sum(not run.in_order(s) for s in run.seen),
        "ended_on_rollback_target": all(s and s[-1] == run.rolled_back_to for s in run.seen),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promotions", type=int, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--load-seconds", type=float, default=60)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "cluster_bench.json"))
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="refit-cluster-bench-"))
    texts = [t for t, _ in banking77_texts("test")[:400]]
    postgres = launch_postgres()
    s3 = None
    try:
        s3 = launch_s3(tmp / "s3")
        with launch_fleet(tmp, postgres, s3, REFIT_WORKER_POLL_S="1") as fleet:
            print("fleet up", flush=True)
            promote = promotion_times(fleet, args.promotions)
            print(f"promote -> all replicas: {promote}", flush=True)
            one = throughput([fleet.replicas["a"]], args.clients, args.seconds, texts)
            two = throughput(
                [fleet.replicas["a"], fleet.replicas["b"]], args.clients, args.seconds, texts
            )
            print(f"throughput 1 replica {one}\n           2 replicas {two}", flush=True)
            claims = claim_latency(fleet, args.jobs)
            print(f"claim latency {claims}", flush=True)
            load = load_summary(promotions_under_load(fleet, args.load_seconds), args.load_seconds)
            print(f"promotions under load {load}", flush=True)
    finally:
        if s3 is not None:
            s3.stop()
        postgres.stop()
        shutil.rmtree(postgres.dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": "PostgreSQL + SeaweedFS S3 + 2 replicas (1 inference worker each) + 2 workers,"
        " all on this machine, loopback",
        "promote_to_all_replicas_s": {
            "n": len(promote),
            "p50": round(statistics.median(promote), 3),
            "max": round(max(promote), 3),
            "all": [round(x, 3) for x in promote],
        },
        "throughput": {
            "one_replica": one,
            "two_replicas": two,
            "ratio_two_to_one": round(two["texts_per_s"] / one["texts_per_s"], 2),
        },
        "job_claim_latency_s": {
            "n": len(claims),
            "p50": round(statistics.median(claims), 3),
            "max": round(max(claims), 3),
            "worker_poll_s": 1.0,
        },
        "promotions_under_load": load,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
