"""Prometheus metrics (prometheus_client; BentoML aggregates them across workers).

Label values are bounded: model name, version and the model's own labels.
"""

from __future__ import annotations

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
