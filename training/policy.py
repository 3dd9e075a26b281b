"""Which transfer-learning strategy fits the data: a pure function, thresholds configurable.

Feature extraction (frozen encoder + logistic-regression head) wins with few labels per
class; fine-tuning wins with many; in between either can win, so both are trained and the
better one on validation macro-F1 is kept (fine-tuning here is LP-FT, which starts from the
probe, so "both" costs one probe plus the fine-tuning epochs). See docs/policy.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from training.config import PolicyThresholds, StrategyChoice

Plan = Literal["feature_extraction", "fine_tuning", "compare"]


@dataclass(frozen=True)
class Decision:
    plan: Plan
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)


def class_count_statistic(per_class: Mapping[str, int], percentile: float) -> int:
    """`k`: the given percentile of per-class counts (lower interpolation: a real count)."""
    counts = np.asarray(sorted(per_class.values()))
    return int(np.percentile(counts, percentile, method="lower"))


def decide(
    per_class: Mapping[str, int],
    thresholds: PolicyThresholds,
    *,
    forced: StrategyChoice = "auto",
    train_examples: int | None = None,
    epochs: int = 1,
    on_cuda: bool = False,
) -> Decision:
    k = class_count_statistic(per_class, thresholds.percentile)
    n = train_examples if train_examples is not None else sum(per_class.values())
    rate = (
        thresholds.finetune_samples_per_s_cuda if on_cuda else thresholds.finetune_samples_per_s_cpu
    )
    epoch_s = n / rate
    inputs: dict[str, Any] = {
        "classes": len(per_class),
        "examples": sum(per_class.values()),
        "min_per_class": min(per_class.values()),
        "k": k,
        "k_percentile": thresholds.percentile,
        "feature_extraction_below": thresholds.feature_extraction_below,
        "fine_tuning_at": thresholds.fine_tuning_at,
        "estimated_epoch_s": round(epoch_s, 1),
        "time_budget_s": thresholds.time_budget_s,
    }
    where = f"p{thresholds.percentile:g} of examples per class is {k}"
    if forced != "auto":
        return Decision(forced, f"strategy forced to {forced} by the caller ({where})", inputs)
    if k < thresholds.feature_extraction_below:
        return Decision(
            "feature_extraction",
            f"{where} < {thresholds.feature_extraction_below}: few labels per class, "
            "a frozen encoder with a tuned linear head generalises best",
            inputs,
        )
    if k >= thresholds.fine_tuning_at:
        return Decision(
            "fine_tuning",
            f"{where} >= {thresholds.fine_tuning_at}: enough labels to fine-tune all weights "
            "(LP-FT; the probe is kept only if it is better beyond noise on validation)",
            inputs,
        )
    if epoch_s > thresholds.time_budget_s:
        return Decision(
            "feature_extraction",
            f"{where}: in the crossover zone, but one fine-tuning epoch (~{epoch_s:.0f} s) "
            f"exceeds the time budget ({thresholds.time_budget_s:.0f} s)",
            inputs,
        )
    return Decision(
        "compare",
        f"{where}: in the crossover zone [{thresholds.feature_extraction_below}, "
        f"{thresholds.fine_tuning_at}): trained both; fine-tuning is kept unless the probe is "
        "better beyond noise on validation",
        inputs,
    )


def adapts_anyway(plan: Plan, probe_strength: float, weak_probe_below: float) -> bool:
    """Few labels, but the frozen geometry does not fit them (the probe's chance-corrected
    macro-F1 is under `weak_probe_below`): `auto` adapts the encoder although the plan is
    feature extraction, and keeps the probe only if it is better beyond noise."""
    return plan == "feature_extraction" and probe_strength < weak_probe_below
