"""Choosing between the probe and the challenger that adapted the encoder, and saying why.

LP-FT is kept unless the probe is better beyond noise on the same validation examples
(McNemar, training/evidence.py); a forced strategy keeps the challenger. Contrastive
adaptation is decided before it runs, by the cross-fitted estimate (training/crossfit.py).
The reason is rendered from this structured
evidence, not grown by hand across branches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.crossfit import CrossFit
from training.strategies import Candidate

_SUMMARY_NAMES = {"contrastive": "contrastive", "fine_tuning": "fine-tuning"}


@dataclass(frozen=True)
class Selection:
    kept: Candidate
    challenger: Candidate
    probe_better: bool
    forced: bool
    evidence: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


def compare(
    y_val: np.ndarray, probe: Candidate, challenger: Candidate, *, seed: int, forced: bool
) -> Selection:
    from training.evidence import paired_compare

    comparison = paired_compare(y_val, probe.val_pred, challenger.val_pred, seed=seed)
    probe_better = comparison.a_better()
    return Selection(
        kept=challenger if forced or not probe_better else probe,
        challenger=challenger,
        probe_better=probe_better,
        forced=forced,
        evidence={**comparison.to_dict(), "probe_better_beyond_noise": probe_better},
        summary=comparison.summary("probe", _SUMMARY_NAMES[challenger.name]),
    )


@dataclass(frozen=True)
class Reason:
    """Why the version is what it is: the policy's decision, then what happened after."""

    decision: str
    weak_probe: str | None = None  # "the probe is weak (...)" when it was adapted anyway
    selection: Selection | None = None
    estimate: CrossFit | None = None  # few-shot: the cross-fitted probe vs contrastive

    def text(self) -> str:
        parts = [self.decision]
        s, weak = self.selection, self.weak_probe
        if self.estimate is not None:
            folds = self.estimate.details.get("folds", 3)
            how = (
                f"an honest estimate ({folds}-fold cross-fitting on the training split: the"
                " encoder adapted on the other folds, the probe scored on the held-out one; "
                f"{self.estimate.summary()})"
            )
            if s is None:
                parts.append(f"{weak}; {how} does not favour contrastive fine-tuning: probe kept")
            else:
                parts.append(
                    f"{weak}; {how} favours contrastive few-shot fine-tuning: trained on all"
                    f" examples ({s.challenger.details['steps']} steps) with a new probe"
                )
            return "; ".join(parts)
        if s is not None and s.challenger.name == "contrastive":
            if s.kept.name == "probe":
                parts.append(
                    f"{weak}, tried contrastive few-shot fine-tuning, kept the probe ({s.summary})"
                )
            else:
                parts.append(
                    f"{weak}: contrastive few-shot fine-tuning of the encoder (SetFit-style, "
                    f"{s.challenger.details['steps']} steps) and a new probe, kept: the probe is"
                    f" not better beyond noise ({s.summary})"
                )
            return "; ".join(parts)
        if weak is not None:
            parts.append(f"{weak}: fine-tuned from it (LP-FT)")
        if s is not None and not s.forced:
            if s.kept.name == "probe":
                parts.append(f"kept the probe: it is better beyond noise ({s.summary})")
            else:
                parts.append(
                    f"kept fine-tuning: the probe is not better beyond noise ({s.summary})"
                )
        return "; ".join(parts)
