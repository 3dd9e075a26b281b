"""Prometheus metrics (prometheus_client; BentoML aggregates them across workers).

Label values are bounded: model name, the model's own labels, and versions — only those
aliased (production, previous, shadow) or still loaded are exposed (see `exposition`).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

PREDICTIONS = Counter(
    "refit_predictions",
    "Texts classified, by model, version and predicted label",
    ["model", "version", "label"],
)
INFERENCE_LATENCY = Histogram(
    "refit_inference_latency_seconds",
    "Time of one onnxruntime call (tokenize + run) for a merged batch",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_SIZE = Histogram(
    "refit_batch_size",
    "Texts per onnxruntime call after merging",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
RETRAIN_JOBS = Counter(
    "refit_retrain_jobs", "Retrain jobs finished, by strategy and outcome", ["strategy", "outcome"]
)
RETRAIN_DURATION = Histogram(
    "refit_retrain_duration_seconds",
    "Wall time of finished retrain jobs",
    buckets=(5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
MODEL_INFO = Gauge(
    "refit_model_info",
    "1 for the production model a worker serves",
    ["model", "version", "strategy", "provider"],
    multiprocess_mode="livemax",
)
MODEL_MACRO_F1 = Gauge(
    "refit_model_validation_macro_f1",
    "Validation macro-F1 of the served production model",
    ["model", "version"],
    multiprocess_mode="livemax",
)
MODEL_SWAPS = Counter(
    "refit_model_swaps", "Production model swaps done by inference workers", ["model"]
)
DRIFT_JS = Gauge(
    "refit_drift_label_js_divergence",
    "JS divergence of live predicted labels vs validation's, per served version",
    ["model", "version"],
    multiprocess_mode="mostrecent",
)
LIVE_ACCURACY = Gauge(
    "refit_live_accuracy",
    "Share of served predictions confirmed by linked feedback (prediction_id), per version",
    ["model", "version"],
    multiprocess_mode="mostrecent",
)
LIVE_CONFIDENCE = Gauge(
    "refit_drift_live_mean_confidence",
    "Mean top-1 score of live predictions, per served version",
    ["model", "version"],
    multiprocess_mode="mostrecent",
)
LIVE_OUT_OF_SCOPE = Gauge(
    "refit_drift_out_of_scope_rate",
    "Share of live predictions answered out of scope, per served version",
    ["model", "version"],
    multiprocess_mode="mostrecent",
)
VALIDATION_CONFIDENCE = Gauge(
    "refit_drift_validation_mean_confidence",
    "Mean top-1 score on the version's validation split (the reference)",
    ["model", "version"],
    multiprocess_mode="mostrecent",
)
FEEDBACK_PENDING = Gauge(
    "refit_feedback_pending",
    "Labeled feedback examples not yet trained on",
    ["model"],
    multiprocess_mode="mostrecent",
)
FEEDBACK_EXAMPLES = Counter("refit_feedback_examples", "Feedback examples accepted", ["model"])
AUTO_RETRAINS = Counter(
    "refit_auto_retrains", "Retrain jobs started by a trigger, by cause", ["model", "cause"]
)
CHALLENGERS_REJECTED = Counter(
    "refit_challengers_rejected",
    "Finished jobs whose version the promotion gate kept as a candidate",
    ["model", "source"],
)
SHADOW_SCORED = Counter(
    "refit_shadow_scored",
    "Live texts the shadow version also scored (its answers reach nobody)",
    ["model", "version"],
)
SHADOW_AGREED = Counter(
    "refit_shadow_agreed",
    "Shadow-scored texts where the shadow's top label matched production's",
    ["model", "version"],
)
SHADOW_SKIPPED = Counter(
    "refit_shadow_skipped",
    "Sampled requests the shadow did not score because it was still busy (protects p99)",
    ["model"],
)
SHADOW_LATENCY = Histogram(
    "refit_shadow_latency_seconds",
    "Queue + inference time of the same sampled requests, production vs shadow",
    ["model", "role"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
SHADOW_DECISIONS = Counter(
    "refit_shadow_decisions", "Shadow versions promoted or dropped", ["model", "outcome"]
)
CANARY_REQUESTS = Counter(
    "refit_canary_requests",
    "Requests of a model with a canary, by who answered (production/canary) and outcome"
    " (ok/error: a canary error is answered by production instead)",
    ["model", "role", "outcome"],
)
CANARY_DECISIONS = Counter(
    "refit_canary_decisions", "Canary versions promoted or rolled back", ["model", "outcome"]
)
MODEL_LOADS = Counter(
    "refit_model_loads",
    "Named models loaded on demand or unloaded (least recently used) by a worker",
    ["model", "event"],
)
REQUEST_LATENCY = Histogram(
    "refit_request_duration_seconds",
    "Server time of one /predict request in the service's code (validation, batch wait,"
    " inference, answer), by model and the version that answered",
    ["model", "version"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
# Fleet state read from the shared store by every replica (each trigger poll): the same
# value on every replica, so dashboards and alerts take max() across them.
WORKER_HEARTBEAT_AGE = Gauge(
    "refit_worker_heartbeat_age_seconds",
    "Seconds since a `refit worker` last wrote its heartbeat (workers seen in the last day,"
    " not stopped)",
    ["worker"],
    multiprocess_mode="mostrecent",
)
JOBS = Gauge(
    "refit_jobs",
    "Retrain jobs queued or running, fleet-wide",
    ["model", "state"],
    multiprocess_mode="mostrecent",
)
RETRAIN_FAILURES_IN_A_ROW = Gauge(
    "refit_retrain_failures_in_a_row",
    "Finished retrain jobs that failed or were interrupted since the last that succeeded",
    ["model"],
    multiprocess_mode="mostrecent",
)
RETRAIN_LAST_DURATION = Gauge(
    "refit_retrain_last_duration_seconds",
    "Run time of the latest finished retrain job, by its outcome",
    ["model", "outcome"],
    multiprocess_mode="mostrecent",
)


class _KeepVersions:
    """Drops the per-version series of versions that are neither aliased nor loaded.

    BentoML runs the workers with prometheus_client's multiprocess mode, where a series
    lives in each worker's mmap file and `labels(...).remove()` in one worker does not reach
    what the collector reads. So the bound is applied where the series are exposed: every
    series with a `version` label of a model in `keep` is shown only for the versions kept
    (production, previous and shadow aliases, and whatever a worker still has loaded).
    """

    def __init__(self, source: Any, keep: dict[str, set[str]]) -> None:
        self.source = source
        self.keep = keep

    def collect(self) -> Any:
        for metric in self.source.collect():
            metric.samples = [
                s
                for s in metric.samples
                if "version" not in s.labels
                or s.labels.get("model") not in self.keep
                or s.labels["version"] in self.keep[s.labels["model"]]
            ]
            if metric.type == "histogram":  # exposition order: buckets, then count and sum
                metric.samples.sort(key=_histogram_order)
            yield metric


def _histogram_order(sample: Any) -> tuple:
    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
    if sample.name.endswith("_bucket"):
        return labels, 0, float(sample.labels.get("le", 0))
    return labels, 1 if sample.name.endswith("_count") else 2, 0.0


def exposition(keep: dict[str, set[str]]) -> tuple[bytes, str]:
    """The Prometheus text for all workers (multiprocess mode, as BentoML's own /metrics)
    with stale versions left out; returns (body, content type)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        source: Any = MultiProcessCollector(None)
    else:
        source = REGISTRY
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_KeepVersions(source, keep))
    return generate_latest(registry), CONTENT_TYPE_LATEST
