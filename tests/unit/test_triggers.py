"""Automatic retraining: trigger logic on a real SQLite store, and the drift statistics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from service.drift import js_divergence
from service.stores import Store
from service.triggers import RetrainPolicy, trigger_cause

POLICY = RetrainPolicy(min_pending=10, interval_s=0, drift_threshold=0.2, backoff_s=100)


def feedback(store: Store, n: int, start: int = 0) -> int:
    return store.examples.add_feedback(
        "m", [(f"text {i}", "ab"[i % 2], None) for i in range(start, start + n)]
    )[1]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "refit.sqlite")


def test_pending_counts_feedback_since_the_last_successful_job(store: Store) -> None:
    assert feedback(store, 4) == 4
    assert feedback(store, 3, start=4) == 7
    job = store.jobs.create_job("m", {}, [], mode="append", source="http")
    assert store.triggers.trigger_state("m")["pending"] == 7  # queued: not trained on yet
    store.jobs.finish(job.id, "succeeded", result={})
    assert store.triggers.trigger_state("m")["pending"] == 0
    assert feedback(store, 2, start=100) == 2


def test_the_pending_threshold_fires_once_and_never_twice_at_a_time(store: Store) -> None:
    feedback(store, 9)
    assert store.triggers.maybe_trigger("m", POLICY, now=1000.0) is None
    feedback(store, 1, start=9)
    job = store.triggers.maybe_trigger("m", POLICY, now=1001.0, owner_pid=42)
    assert job is not None and job.state == "queued" and job.pid == 42
    assert job.request == {
        "strategy": "auto",
        "mode": "append",
        "promote": "auto",
        "trigger": "pending",
        "cause": "10 new labeled examples pending (threshold 10)",
        "pending": 10,
    }
    assert store.examples.dataset("m", upto_batch=job.batch_id)[-1] == (
        "text 9",
        "b",
    )  # trains on all
    feedback(store, 50, start=10)
    assert store.triggers.maybe_trigger("m", POLICY, now=1002.0) is None  # one job at a time


def test_concurrent_workers_start_one_job(tmp_path: Path) -> None:
    stores = [Store(tmp_path / "refit.sqlite") for _ in range(4)]  # one per worker
    feedback(stores[0], 12)
    started = [s.triggers.maybe_trigger("m", POLICY, now=5.0) for s in stores]
    assert sum(j is not None for j in started) == 1
    assert len(stores[0].jobs.list_jobs("m")) == 1


def test_failed_jobs_back_off_exponentially_and_state_survives_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "refit.sqlite")
    feedback(store, 10)
    first = store.triggers.maybe_trigger("m", POLICY, now=0.0)
    store.jobs.finish(first.id, "failed", error="boom")
    finished = store.jobs.get_job(first.id).finished_at
    restarted = Store(tmp_path / "refit.sqlite")  # a new process: everything read back from disk
    state = restarted.triggers.trigger_state("m")
    assert state["pending"] == 10 and state["consecutive_failures"] == 1
    assert restarted.triggers.maybe_trigger("m", POLICY, now=finished + 99) is None
    second = restarted.triggers.maybe_trigger("m", POLICY, now=finished + 101)
    assert second is not None
    restarted.jobs.finish(second.id, "interrupted", error="killed")
    again = restarted.jobs.get_job(second.id).finished_at
    assert restarted.triggers.trigger_state("m")["consecutive_failures"] == 2
    assert restarted.triggers.maybe_trigger("m", POLICY, now=again + 199) is None  # 100 s x 2
    third = restarted.triggers.maybe_trigger("m", POLICY, now=again + 201)
    restarted.jobs.finish(third.id, "succeeded", result={})
    assert restarted.triggers.trigger_state("m")["consecutive_failures"] == 0
    assert restarted.triggers.trigger_state("m")["pending"] == 0


def base_state(**kw):
    return {
        "pending": 5,
        "first_pending_at": 100.0,
        "last_success_at": None,
        "consecutive_failures": 0,
        "last_failure_at": None,
        "active_job": None,
        **kw,
    }


@pytest.mark.parametrize(
    ("policy", "state", "drift", "now", "expected"),
    [
        (POLICY, base_state(), None, 200.0, None),  # 5 < 10, no schedule, no drift
        (POLICY, base_state(pending=10), None, 200.0, "pending"),
        (POLICY, base_state(pending=0), 0.9, 200.0, None),  # drift alone needs new labels
        (POLICY, base_state(), 0.25, 200.0, "drift"),
        (POLICY, base_state(), 0.19, 200.0, None),
        (RetrainPolicy(min_pending=0, interval_s=60), base_state(), None, 159.0, None),
        (RetrainPolicy(min_pending=0, interval_s=60), base_state(), None, 160.0, "schedule"),
        (
            RetrainPolicy(min_pending=0, interval_s=60),
            base_state(last_success_at=150.0),
            None,
            200.0,
            None,
        ),
        (POLICY, base_state(pending=50, active_job="j"), None, 200.0, None),
        (
            POLICY,
            base_state(pending=50, consecutive_failures=3, last_failure_at=100.0),
            None,
            499.0,
            None,
        ),
        (
            POLICY,
            base_state(pending=50, consecutive_failures=3, last_failure_at=100.0),
            None,
            500.0,
            "pending",
        ),
        (
            RetrainPolicy(min_pending=0, interval_s=0, drift_threshold=0),
            base_state(),
            1.0,
            9e9,
            None,
        ),
    ],
)
def test_trigger_cause_table(policy, state, drift, now, expected) -> None:
    fired = trigger_cause(policy, state, drift, now)
    assert (fired[0] if fired else None) == expected


def test_js_divergence_on_known_distributions() -> None:
    assert js_divergence({"a": 5, "b": 5}, {"a": 1, "b": 1}) == 0.0
    assert js_divergence({"a": 1}, {"b": 1}) == 1.0  # disjoint: the base-2 maximum
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4)
    expected = 0.5 * math.log2(1 / 0.75) + 0.5 * (
        0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    )
    assert js_divergence({"a": 2}, {"a": 1, "b": 1}) == pytest.approx(expected, abs=1e-12)
    assert js_divergence({"a": 2}, {"a": 1, "b": 1}) == pytest.approx(0.311278, abs=1e-6)
    assert js_divergence({"a": 3, "b": 1}, {"a": 1, "b": 3}) == js_divergence(
        {"a": 1, "b": 3}, {"a": 3, "b": 1}
    )
    with pytest.raises(ValueError, match="positive total"):
        js_divergence({}, {"a": 1})


def test_uncertain_inputs_keep_a_hash_unless_texts_are_allowed(store: Store) -> None:
    store.telemetry.add_uncertain("m", [("v1", "a", 0.3, "secret text", 1.0)], keep_text=False)
    store.telemetry.add_uncertain("m", [("v1", "b", 0.4, "labelable text", 2.0)], keep_text=True)
    newest, oldest = store.telemetry.uncertain("m", 10)
    assert newest["text"] == "labelable text" and newest["label"] == "b"
    assert oldest["text"] is None and len(oldest["text_sha256"]) == 64
    store.telemetry.add_uncertain(
        "m", [("v1", "oos", 0.9, "what's the weather", 0.5)], keep_text=True
    )
    first, *rest = store.telemetry.uncertain("m", 10, out_of_scope_label="oos")
    assert first["label"] == "oos" and first["out_of_scope"] is True  # labeled first
    assert [r["label"] for r in rest] == ["b", "a"] and not any(r["out_of_scope"] for r in rest)


def test_traffic_counts_add_up_across_workers(store: Store) -> None:
    store.telemetry.add_traffic("m", {("v1", "a"): (3, 2.4), ("v1", "b"): (1, 0.5)})
    store.telemetry.add_traffic("m", {("v1", "a"): (2, 1.6), ("v2", "a"): (7, 7.0)})
    counts, confidence = store.telemetry.traffic("m", "v1")
    assert counts == {"a": 5, "b": 1} and confidence == pytest.approx(4.5)


def test_drift_report_needs_enough_live_and_reference_predictions() -> None:
    from datetime import UTC, datetime

    from models import BackboneInfo, DataSummary, Metrics, ModelMetadata, OnnxInfo
    from service.drift import drift_report

    def meta(predicted: dict[str, int]) -> ModelMetadata:
        return ModelMetadata(
            name="m",
            version="v1",
            created_at=datetime.now(UTC),
            labels=sorted(predicted),
            backbone=BackboneInfo(name="b", sha256="0" * 64),
            strategy="feature_extraction",
            reason="test",
            data=DataSummary(
                count=1, per_class={}, sha256="0" * 64, train_count=1, validation_count=1
            ),
            metrics=Metrics(
                accuracy=1.0, macro_f1=1.0, count=1, mean_confidence=0.9, predicted_counts=predicted
            ),
            max_length=128,
            onnx=OnnxInfo(opset=17, inputs=[], outputs=[], parity_max_abs_diff=0.0),
        )

    big = meta({"a": 30, "b": 30})
    report = drift_report(big, {"a": 90, "b": 10}, 70.0, min_predictions=100)
    assert report["label_js_divergence"] == pytest.approx(
        js_divergence({"a": 9, "b": 1}, {"a": 1, "b": 1}), abs=1e-4
    )
    assert report["live_mean_confidence"] == 0.7 and report["confidence_drop"] == pytest.approx(0.2)
    assert drift_report(big, {"a": 90}, 80.0, min_predictions=100)["label_js_divergence"] is None
    assert report["live_out_of_scope_rate"] is None  # a version without a detector
    from models import OutOfScope, OutOfScopeEvidence

    detector = OutOfScope(
        method="max_probability",
        threshold=0.5,
        label="oos",
        evidence=OutOfScopeEvidence(source="none", in_scope_count=60, in_scope_recall=0.95),
    )
    with_oos = big.model_copy(update={"out_of_scope": detector})
    report = drift_report(with_oos, {"a": 60, "b": 20, "oos": 20}, 70.0, min_predictions=100)
    assert report["live_out_of_scope_rate"] == 0.2
    assert report["validation_out_of_scope_rate"] == pytest.approx(0.05)
    small = meta({"a": 5, "b": 5})  # a 10-example validation split: no reference
    assert (
        drift_report(small, {"a": 900, "b": 100}, 700.0, min_predictions=100)["label_js_divergence"]
        is None
    )
