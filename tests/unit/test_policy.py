from __future__ import annotations

import pytest

from training import PolicyThresholds, decide
from training.policy import class_count_statistic

DEFAULT = PolicyThresholds()


def counts(*sizes: int) -> dict[str, int]:
    return {f"c{i}": n for i, n in enumerate(sizes)}


@pytest.mark.parametrize(
    ("per_class", "forced", "plan", "reason_part"),
    [
        (counts(2, 2), "auto", "feature_extraction", "p10 of examples per class is 2 < 16"),
        (counts(*[8] * 77), "auto", "feature_extraction", "is 8 < 16"),
        (counts(*[15] * 10), "auto", "feature_extraction", "is 15 < 16"),
        (counts(*[16] * 10), "auto", "compare", "crossover zone [16, 64)"),
        (counts(*[63] * 10), "auto", "compare", "crossover zone"),
        (counts(*[64] * 10), "auto", "fine_tuning", "is 64 >= 64"),
        # one tiny class does not hold the other 19 back (p10 ignores it) ...
        (counts(3, *[100] * 19), "auto", "fine_tuning", "is 100 >= 64"),
        # ... but three do
        (counts(3, 3, 3, *[100] * 17), "auto", "feature_extraction", "is 3 < 16"),
        (counts(*[8] * 10), "fine_tuning", "fine_tuning", "forced to fine_tuning by the caller"),
        (
            counts(*[500] * 10),
            "feature_extraction",
            "feature_extraction",
            "forced to feature_extraction",
        ),
    ],
)
def test_policy_table(per_class, forced, plan, reason_part) -> None:
    decision = decide(per_class, DEFAULT, forced=forced)
    assert decision.plan == plan
    assert reason_part in decision.reason
    assert decision.inputs["classes"] == len(per_class)
    assert decision.inputs["min_per_class"] == min(per_class.values())


def test_banking77_shape_goes_to_fine_tuning() -> None:
    # Banking77's real counts: min 35, p10 95, median 127 (train split)
    per_class = counts(35, 41, 59, 61, 82, 86, 87, 95, *[127] * 69)
    assert class_count_statistic(per_class, 10) == 95
    assert decide(per_class, DEFAULT).plan == "fine_tuning"


def test_crossover_falls_back_to_feature_extraction_over_budget() -> None:
    tight = PolicyThresholds(time_budget_s=10, finetune_samples_per_s_cpu=30)
    decision = decide(counts(*[32] * 20), tight, train_examples=600)
    assert decision.plan == "feature_extraction"
    assert "one fine-tuning epoch (~20 s) exceeds the time budget (10 s)" in decision.reason
    assert decide(counts(*[32] * 20), tight, train_examples=600, on_cuda=True).plan == "compare"


def test_thresholds_are_configurable() -> None:
    low = PolicyThresholds(feature_extraction_below=4, fine_tuning_at=8)
    assert decide(counts(*[8] * 5), low).plan == "fine_tuning"
    assert decide(counts(*[5] * 5), low).plan == "compare"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"feature_extraction_below": 1}, "feature_extraction_below must be >= 2, got 1"),
        ({"fine_tuning_at": 8}, "fine_tuning_at must be >= feature_extraction_below (16), got 8"),
        ({"percentile": 90}, "percentile must be between 0 and 50, got 90"),
        ({"time_budget_s": 0}, "time_budget_s must be > 0, got 0"),
    ],
)
def test_bad_thresholds_are_rejected_by_name(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PolicyThresholds(**kwargs)
