"""The noise-aware rules: paired comparison, the noise margin, the probe's CV choice."""

from __future__ import annotations

import numpy as np

from training.evidence import noise_margin, paired_compare
from training.head import fit_probe, label_name_text, stratified_folds


def test_paired_compare_needs_disagreements_not_scores() -> None:
    y = np.zeros(1000, dtype=int)
    a = y.copy()
    b = y.copy()
    a[:7] = 1  # A wrong on 7, B wrong on 0: 0.993 vs 1.000, but only 7 disagreements
    small = paired_compare(y, a, b)
    assert (small.a_only_right, small.b_only_right) == (0, 7)
    assert small.p_value < 0.05 and small.b_better() and not small.a_better()
    # One disagreement is never evidence, whatever the scores say.
    a = y.copy()
    a[0] = 1
    one = paired_compare(y, a, b)
    assert one.p_value == 1.0 and not one.b_better() and not one.a_better()


def test_paired_compare_on_a_tiny_validation_split_is_never_significant() -> None:
    y = np.arange(6)  # 6 classes, one validation example each (8 per class, 10%)
    a = np.array([0, 1, 0, 0, 0, 0])  # 2 right
    b = np.arange(6)  # all right
    c = paired_compare(y, a, b)
    assert c.b_macro_f1 > c.a_macro_f1
    assert not c.b_better()  # 4 of 4 disagreements: p = 0.125
    assert c.delta_ci[0] <= c.delta_ci[1]
    assert "McNemar p=" in c.summary("probe", "fine-tuning")


def test_noise_margin_shrinks_with_more_examples() -> None:
    assert noise_margin(0.9, 100) > noise_margin(0.9, 10_000)
    assert abs(noise_margin(0.9, 100) - 0.03) < 1e-9
    assert noise_margin(1.0, 50) > 0  # a perfect score is not free of noise


def test_cv_folds_are_stratified_and_cover_everything() -> None:
    y = np.repeat(np.arange(4), 7)
    folds = stratified_folds(y, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(y)))
    for fold in folds:
        assert set(np.bincount(y[fold], minlength=4).tolist()) <= {2, 3}


def test_label_names_are_kept_only_when_cross_validation_agrees() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    y = np.repeat(np.arange(3), 6)
    x = centers[y] + rng.normal(scale=2.5, size=(len(y), 16))
    x_val = centers + rng.normal(scale=2.5, size=(3, 16))
    y_val = np.arange(3)
    grid = (10.0, 1.0)
    helpful = fit_probe(
        x, y, x_val, y_val, 3, c_grid=grid, max_iter=500, seed=0, name_vectors=centers * 3
    )
    assert helpful.selection == "cross-validation"
    assert helpful.label_names, helpful.search  # the true centers are a strong prior
    misleading = fit_probe(
        x, y, x_val, y_val, 3, c_grid=grid, max_iter=500, seed=0, name_vectors=-centers * 3
    )
    assert not misleading.label_names, misleading.search
    assert set(helpful.search) == {"10", "1", "10+names", "1+names"}


def test_the_best_of_several_options_is_corrected_for_its_luck() -> None:
    """Pure noise: every option is at chance, the best one looks better only by luck. The
    Tibshirani correction takes (most of) that luck off; one option has none to take."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 8)
    x = rng.normal(size=(len(y), 16))
    grid = (10.0, 1.0, 100.0, 0.01)
    lucky = fit_probe(x, y, x[:4], y[:4], 4, c_grid=grid, max_iter=500, seed=0)
    assert lucky.selection_score == max(lucky.search.values()) == 0.397817
    assert lucky.selection_bias == 0.040079  # mean over folds of (fold's best - chosen's)
    assert lucky.honest_score == lucky.selection_score - lucky.selection_bias
    assert lucky.chance_corrected(4) == (lucky.honest_score - 0.25) / 0.75
    single = fit_probe(x, y, x[:4], y[:4], 4, c_grid=(10.0,), max_iter=500, seed=0)
    assert single.selection_bias == 0.0 and single.honest_score == single.selection_score


def test_cross_fitting_adapts_only_when_ahead_on_both_counts() -> None:
    from training.crossfit import CrossFit

    y = np.array([0, 0, 1, 1, 2, 2])

    def estimate(probe: list[int], adapted: list[int]) -> CrossFit:
        return CrossFit(paired_compare(y, np.array(probe), np.array(adapted)), 8, 1.0)

    assert estimate([0, 0, 1, 2, 2, 1], [0, 0, 1, 1, 2, 1]).adapt  # one more right
    assert not estimate([0, 0, 1, 1, 2, 1], [0, 0, 1, 1, 2, 1]).adapt  # a tie: the probe
    assert not estimate([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 1]).adapt
    assert "out-of-fold macro-F1 contrastive" in estimate([0] * 6, [0] * 6).summary()


def test_label_name_text() -> None:
    assert label_name_text("card_arrival") == "card arrival"
    assert label_name_text("Top-Up  limits") == "top up limits"


def test_recipe_fits_the_step_count_to_the_data() -> None:
    from training.config import TrainConfig
    from training.finetune import plan_recipe

    config = TrainConfig()
    big = plan_recipe(config, 9000)  # Banking77, all data: 4 epochs as configured
    assert (big.epochs, big.batch_size, big.learning_rate, big.small_data) == (4, 32, 3e-5, False)
    small = plan_recipe(config, 346)  # 64 per class, 6 classes, 90% train
    assert small.small_data and small.batch_size == 16 and small.learning_rate == 1e-4
    assert small.epochs * -(-346 // 16) >= config.min_steps  # at least min_steps steps
    tiny = plan_recipe(config, 24)  # capped by max_epochs
    assert tiny.epochs == config.max_epochs
    exact = plan_recipe(TrainConfig(epochs=1), 24)  # an explicit epoch count is obeyed
    assert (exact.epochs, exact.small_data) == (1, False)
