"""Drift signals from live traffic, cheap enough to compute on every poll.

- The predicted-label distribution of live traffic vs the one on the version's validation
  split: Jensen-Shannon divergence, base 2, so 0 (same) to 1 (disjoint).
- The mean top-1 confidence of live traffic vs validation's: a drop says inputs look less
  like the training data even when the label mix holds.
- The share of live texts answered out of scope vs the share of held-out in-scope texts the
  detector turned away at training time: a rise says traffic the classes do not cover.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from models import ModelMetadata

MIN_REFERENCE = 50  # validation predictions below this make too noisy a reference


def js_divergence(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Jensen-Shannon divergence (base 2) of two distributions given as counts or weights."""
    keys = set(p) | set(q)
    sp, sq = sum(p.values()), sum(q.values())
    if sp <= 0 or sq <= 0:
        raise ValueError("both distributions need a positive total")
    total = 0.0
    for k in keys:
        a, b = p.get(k, 0) / sp, q.get(k, 0) / sq
        m = (a + b) / 2
        if a > 0:
            total += 0.5 * a * math.log2(a / m)
        if b > 0:
            total += 0.5 * b * math.log2(b / m)
    return min(max(total, 0.0), 1.0)


def reference(meta: ModelMetadata) -> tuple[dict[str, int], str]:
    """Validation's predicted labels when recorded (older versions: its true labels)."""
    if meta.metrics.predicted_counts:
        return dict(meta.metrics.predicted_counts), "validation predictions"
    return {k: v.support for k, v in meta.metrics.per_class.items()}, "validation labels"


def drift_report(
    meta: ModelMetadata, counts: Mapping[str, int], confidence_sum: float, *, min_predictions: int
) -> dict[str, Any]:
    """The drift signals of one version; divergence is None until `min_predictions` live
    predictions, and for versions validated on fewer than `MIN_REFERENCE` examples."""
    n = sum(counts.values())
    ref, source = reference(meta)
    detector = (
        meta.out_of_scope if meta.out_of_scope and meta.out_of_scope.method != "off" else None
    )
    # out-of-scope answers have their own signal below; the label mix is the known labels'
    known = {k: v for k, v in counts.items() if detector is None or k != detector.label}
    live_conf = confidence_sum / n if n else None
    ref_conf = meta.metrics.mean_confidence
    enough = n >= min_predictions and sum(ref.values()) >= MIN_REFERENCE
    detector = (
        meta.out_of_scope if meta.out_of_scope and meta.out_of_scope.method != "off" else None
    )
    live_oos = counts.get(detector.label, 0) / n if detector is not None and n else None
    evidence = detector.evidence if detector is not None else None
    ref_oos = (
        round(1 - evidence.in_scope_recall, 4)
        if evidence is not None and evidence.in_scope_recall is not None
        else None
    )
    return {
        "version": meta.version,
        "predictions": n,
        "min_predictions": min_predictions,
        "label_js_divergence": round(js_divergence(known, ref), 4) if enough else None,
        "reference": source,
        "reference_count": sum(ref.values()),
        "live_mean_confidence": round(live_conf, 4) if live_conf is not None else None,
        "validation_mean_confidence": ref_conf,
        "confidence_drop": (
            round(ref_conf - live_conf, 4)
            if ref_conf is not None and live_conf is not None and enough
            else None
        ),
        "live_out_of_scope_rate": round(live_oos, 4) if live_oos is not None else None,
        "validation_out_of_scope_rate": ref_oos,
    }
