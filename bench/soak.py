"""Soak: a steady moderate load for a long time, with feedback-triggered retrains and
promotions, watching for leaks.

Starts the service (2 inference workers, embedded trainer) on a 10-class Banking77 model,
runs `--concurrency` keep-alive clients (1–3 texts per request, a short pause between
requests: moderate, not saturating), and every `--retrain-every` seconds posts labeled
feedback linked to served predictions (prediction ids) so that the pending trigger starts
a retrain; a challenger the gate keeps as a candidate is promoted by hand, so every round
swaps the served model. Every `--sample-every` seconds it records, per
process: resident memory, open file descriptors and threads (inference workers, the
launcher, the BentoML arbiter and any trainer), the p99 of the last interval, failed
requests and the number of series /metrics exposes.

Goals (issue: reliability): after warm-up, worker and launcher RSS grow ≤ 5%, file descriptors and threads stay flat, zero failed requests.
Trainer processes are new per job: their peak RSS per job must not creep up either.
Warm-up ends `--warmup` seconds in or a minute after the first swap, whichever is later:
a swap holds the old and the new session side by side while requests drain, and that
high-water mark is the process's steady state, not growth (later swaps must stay flat).

    python bench/soak.py [--duration 1800] [--out bench/results/soak.json]
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.serve_bench import percentile  # noqa: E402
from bench.swap_under_load import REPO  # noqa: E402
from service.harness.data import banking77_slice  # noqa: E402
from service.harness.server import make_server  # noqa: E402

TOKEN = "soak-bench-token"
CLASSES = [
    "activate_my_card",
    "age_limit",
    "apple_pay_or_google_pay",
    "atm_support",
    "card_arrival",
    "card_linking",
    "change_pin",
    "country_support",
    "declined_transfer",
    "exchange_rate",
]


class Load:
    """Closed-loop clients; every response recorded as (end time, latency ms, status)."""

    def __init__(self, url: str, pool: list[tuple[str, str]], concurrency: int, pause: float):
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.pool = pool
        self.concurrency = concurrency
        self.pause = pause
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.records: list[tuple[float, float, int]] = []
        self.served: list[tuple[str, str, str]] = []  # (prediction id, text, true label)
        self.threads = [
            threading.Thread(target=self._client, args=(k,), daemon=True)
            for k in range(concurrency)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _client(self, k: int) -> None:
        rng = random.Random(k)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        while not self.stop.is_set():
            rows = rng.sample(self.pool, rng.randint(1, 3))
            body = json.dumps({"texts": [t for t, _ in rows]})
            start = time.monotonic()
            try:
                conn.request("POST", "/predict", body, {"content-type": "application/json"})
                r = conn.getresponse()
                payload = r.read()
                status = r.status
            except (OSError, http.client.HTTPException):
                status, payload = 599, b""
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            end = time.monotonic()
            with self.lock:
                self.records.append((end, 1000 * (end - start), status))
                if status == 200 and len(self.served) < 200_000:
                    ids = [p["id"] for p in json.loads(payload)["predictions"]]
                    self.served += [(i, t, y) for i, (t, y) in zip(ids, rows, strict=True)]
            time.sleep(self.pause)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def processes(launcher: int) -> dict[str, list[psutil.Process]]:
    """The service's processes by role (from their command lines)."""
    roles: dict[str, list[psutil.Process]] = {"launcher": [], "worker": [], "trainer": []}
    try:
        root = psutil.Process(launcher)
        roles["launcher"].append(root)
        for p in root.children(recursive=True):
            cmd = " ".join(p.cmdline())
            if "service.trainer" in cmd:
                roles["trainer"].append(p)
            elif "_bentoml_impl" in cmd or "worker" in cmd:
                roles["worker"].append(p)
            else:
                roles.setdefault("other", []).append(p)
    except psutil.NoSuchProcess:
        pass
    return roles


def sample_process(p: psutil.Process) -> dict | None:
    try:
        with p.oneshot():
            return {
                "pid": p.pid,
                "rss_mb": round(p.memory_info().rss / 2**20, 1),
                "fds": p.num_fds(),
                "threads": p.num_threads(),
            }
    except psutil.Error:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800)
    parser.add_argument("--warmup", type=float, default=360)
    parser.add_argument("--retrain-every", type=float, default=300)
    parser.add_argument("--sample-every", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between requests")
    parser.add_argument("--feedback", type=int, default=120, help="labeled examples per round")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "soak.json"))
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="refit-soak-"))
    first = tmp / "first.csv"
    with first.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(banking77_slice("train", CLASSES, per_class=8, seed=0))
    # traffic (and so feedback) from texts the first model did not train on, enough for every
    # round to bring new examples
    first_texts = {t for t, _ in banking77_slice("train", CLASSES, per_class=8, seed=0)}
    pool = [
        r
        for r in banking77_slice("train", CLASSES, per_class=None)
        + banking77_slice("test", CLASSES, per_class=None)
        if r[0] not in first_texts
    ]
    server = make_server(
        tmp,
        REFIT_DEFAULT_DATA=str(first),
        REFIT_API_TOKEN=TOKEN,
        REFIT_RETRAIN_MIN_PENDING=str(args.feedback),
        REFIT_DRIFT_THRESHOLD="0",
        REFIT_TRIGGER_POLL_S="2",
        REFIT_FINE_TUNING_AT="100000",  # feature extraction: a retrain is ~30 s, not minutes
        REFIT_TRAINER_THREADS="1",
        REFIT_PREDICTION_WINDOW="20000",
    )
    server.start()
    admin = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
    )
    load = Load(server.url, pool, args.concurrency, args.pause)
    samples: list[dict] = []
    trainer_peaks: dict[int, float] = {}
    rounds: list[dict] = []
    t0 = time.monotonic()
    load.start()
    next_round = t0 + 60  # the first retrain after a minute, then every --retrain-every
    linked = 0
    promoted_by_hand: list[str] = []
    first_swap: float | None = None  # seconds in, when a retrained version first succeeded
    initial = {j["id"] for j in admin.get("/jobs").json()["jobs"]}  # the first-start model
    try:
        while time.monotonic() - t0 < args.duration:
            time.sleep(args.sample_every)
            now = time.monotonic()
            if now >= next_round:
                with load.lock:
                    fresh = load.served[linked:]
                    linked = len(load.served)
                examples = [{"text": t, "label": y, "prediction_id": i} for i, t, y in fresh]
                random.Random(len(rounds)).shuffle(examples)
                # each text once per round (the latest label would win anyway)
                seen: set[str] = set()
                unique = [e for e in examples if not (e["text"] in seen or seen.add(e["text"]))]
                r = admin.post("/feedback", json={"examples": unique[: args.feedback]})
                rounds.append(
                    {"t_s": round(now - t0, 1), "status": r.status_code, "sent": args.feedback}
                )
                next_round = now + args.retrain_every
            for job in admin.get("/jobs").json()["jobs"]:
                result = job.get("result") or {}
                version = result.get("version")
                done = job["state"] == "succeeded" and not result.get("promoted")
                retrained = job["id"] not in initial and job["state"] == "succeeded"
                if retrained and version and first_swap is None:
                    first_swap = now - t0
                if done and version and version not in promoted_by_hand:
                    promoted_by_hand.append(version)
                    admin.post("/models/promote", json={"version": version})
            roles = processes(server.proc.pid)
            for p in roles["trainer"]:
                s = sample_process(p)
                if s:
                    trainer_peaks[p.pid] = max(trainer_peaks.get(p.pid, 0.0), s["rss_mb"])
            with load.lock:
                window = [r for r in load.records if r[0] > now - args.sample_every]
            try:
                series = sum(
                    1
                    for line in admin.get("/metrics").text.splitlines()
                    if line and not line.startswith("#")
                )
            except httpx.HTTPError:
                series = None
            samples.append(
                {
                    "t_s": round(now - t0, 1),
                    "workers": [s for p in roles["worker"] if (s := sample_process(p))],
                    "launcher": [s for p in roles["launcher"] if (s := sample_process(p))],
                    "other": [s for p in roles.get("other", []) if (s := sample_process(p))],
                    "trainer_running": bool(roles["trainer"]),
                    "requests": len(window),
                    "p99_ms": round(percentile([r[1] for r in window], 99), 2) if window else None,
                    "failed": sum(1 for r in window if r[2] != 200),
                    "metric_series": series,
                }
            )
            print(  # noqa: T201
                f"t={samples[-1]['t_s']:.0f}s workers RSS "
                f"{[w['rss_mb'] for w in samples[-1]['workers']]} p99 {samples[-1]['p99_ms']} ms"
                f" trainer={samples[-1]['trainer_running']} series={series}",
                flush=True,
            )
        jobs = admin.get("/jobs").json()["jobs"]
    finally:
        load.finish()
        server.stop()

    warmup = max(args.warmup, (first_swap or 0) + 60)
    result = summarize(samples, jobs, rounds, trainer_peaks, load, args, warmup)
    result["summary"]["first_swap_s"] = round(first_swap, 1) if first_swap else None
    result["summary"]["jobs"]["promoted_by_hand"] = len(promoted_by_hand)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    plot(samples, Path(args.out).with_suffix(".png"), warmup)
    print(json.dumps(result["summary"], indent=2))  # noqa: T201
    return 0 if result["summary"]["goals_met"] else 1


def _growth(samples: list[dict], role: str, warmup: float) -> dict:
    """Per process of `role` alive through the run: RSS at the end of warm-up (median of
    the minute after it) vs the last minute; fds and threads likewise."""
    by_pid: dict[int, list[tuple[float, dict]]] = {}
    for s in samples:
        for p in s[role]:
            by_pid.setdefault(p["pid"], []).append((s["t_s"], p))
    out = {}
    end = samples[-1]["t_s"]
    for pid, series in by_pid.items():
        base = [p for t, p in series if warmup <= t < warmup + 60]
        last = [p for t, p in series if t >= end - 60]
        if not base or not last:
            continue
        row = {}
        for key in ("rss_mb", "fds", "threads"):
            a = statistics.median(p[key] for p in base)
            b = statistics.median(p[key] for p in last)
            row[key] = {"after_warmup": a, "end": b, "growth": round((b - a) / a, 4) if a else 0}
        out[str(pid)] = row
    return out


def summarize(samples, jobs, rounds, trainer_peaks, load, args, warmup: float) -> dict:
    workers = _growth(samples, "workers", warmup)
    launcher = _growth(samples, "launcher", warmup)
    failed = sum(1 for r in load.records if r[2] != 200)
    rss_growth = max(
        [row["rss_mb"]["growth"] for row in (*workers.values(), *launcher.values())] or [0]
    )
    fd_growth = max(
        [
            row[k]["end"] - row[k]["after_warmup"]
            for row in (*workers.values(), *launcher.values())
            for k in ("fds",)
        ]
        or [0]
    )
    thread_growth = max(
        [
            row["threads"]["end"] - row["threads"]["after_warmup"]
            for row in (*workers.values(), *launcher.values())
        ]
        or [0]
    )
    finished = [j for j in jobs if j["state"] not in ("queued", "running")]
    peaks = list(trainer_peaks.values())
    p99s = [s["p99_ms"] for s in samples if s["p99_ms"] is not None and s["t_s"] >= warmup]
    series = [s["metric_series"] for s in samples if s["metric_series"] is not None]
    summary = {
        "duration_s": args.duration,
        "warmup_ends_s": round(warmup, 1),
        "requests": len(load.records),
        "failed_requests": failed,
        "jobs": {
            "finished": len(finished),
            "succeeded": sum(j["state"] == "succeeded" for j in finished),
            "promoted": sum(bool((j.get("result") or {}).get("promoted")) for j in finished),
        },
        "max_rss_growth_after_warmup": rss_growth,
        "max_fd_growth_after_warmup": fd_growth,
        "max_thread_growth_after_warmup": thread_growth,
        "trainer_peak_rss_mb_per_job": peaks,
        "p99_ms_after_warmup": {
            "median_of_intervals": round(statistics.median(p99s), 2) if p99s else None,
            "max_interval": max(p99s) if p99s else None,
        },
        "metric_series": {"first": series[0] if series else None, "max": max(series or [0])},
        "goals_met": bool(workers)  # something measured after warm-up
        and failed == 0
        and rss_growth <= 0.05
        and fd_growth <= 2
        and thread_growth <= 2,
    }
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "settings": {
            k: getattr(args, k)
            for k in ("duration", "warmup", "retrain_every", "concurrency", "pause", "feedback")
        },
        "summary": summary,
        "per_process": {"workers": workers, "launcher": launcher},
        "feedback_rounds": rounds,
        "jobs": [
            {
                "id": j["id"],
                "state": j["state"],
                "trigger": (j.get("request") or {}).get("trigger"),
                "promoted": (j.get("result") or {}).get("promoted"),
            }
            for j in jobs
        ],
        "samples": samples,
    }


def plot(samples: list[dict], path: Path, warmup: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    pids = sorted({p["pid"] for s in samples for p in s["workers"] + s["launcher"]})
    for pid in pids:
        pts = [
            (s["t_s"] / 60, p["rss_mb"])
            for s in samples
            for p in s["workers"] + s["launcher"]
            if p["pid"] == pid
        ]
        role = (
            "launcher" if any(p["pid"] == pid for s in samples for p in s["launcher"]) else "worker"
        )
        ax1.plot(*zip(*pts, strict=True), label=f"{role} {pid}")
    ax1.set_ylabel("RSS (MiB)")
    ax1.legend(fontsize=7)
    ax1.axvline(warmup / 60, color="grey", linestyle=":")
    pts = [(s["t_s"] / 60, s["p99_ms"]) for s in samples if s["p99_ms"] is not None]
    ax2.plot(*zip(*pts, strict=True), color="tab:red")
    for s in samples:
        if s["trainer_running"]:
            ax2.axvspan(s["t_s"] / 60 - 1 / 12, s["t_s"] / 60, color="tab:orange", alpha=0.15)
    ax2.set_ylabel("p99 per interval (ms)")
    ax2.set_xlabel("minutes (shaded: a retrain running)")
    fig.suptitle("Refit soak: RSS and p99 under steady load with retrains")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
