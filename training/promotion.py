"""Promotion: the one place where a freshly trained version becomes production, stays a
candidate, or goes to shadow. The service's trainer, `refit worker` (through it), `refit
train --promote` and the first start all come here.

The gate: a challenger is promoted when its validation macro-F1 (multi-label: macro-F1
over labels at each version's own thresholds) is not below the champion's (production's, scored on the *same* held-out examples) minus a tolerance and,
when the data has out-of-scope examples, its out-of-scope recall on them is not below the
champion's minus the same tolerance (a champion without a detector answers none of them);
`always` skips the comparison (`refit train --force`), `never` keeps a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models import Metrics, ModelMetadata, Registry, RegistryError
from models.data import Dataset
from models.multilabel import MultiDataset

Mode = Literal["auto", "always", "never", "shadow"]


@dataclass(frozen=True)
class Outcome:
    promoted: bool
    shadow: bool
    reason: str
    champion_version: str | None
    champion: Metrics | None


def champion_out_of_scope_recall(registry: Registry, name: str, texts: list[str]) -> float | None:
    """The share of `texts` production answers out of scope (None: no production)."""
    from training.evaluate import out_of_scope_flags

    try:
        mv = registry.verify(name, "production")
    except (RegistryError, LookupError):
        return None
    return float(out_of_scope_flags(mv, texts).mean()) if texts else 0.0


def champion_metrics(
    registry: Registry, name: str, texts: list[str], labels: list[str]
) -> tuple[str, Metrics] | None:
    """The production model's metrics on the challenger's held-out examples.

    Labels the champion does not know count as errors, so a challenger that learned a new
    class is not penalised for it.
    """
    from training.evaluate import OnnxRunner, compute_metrics

    try:
        mv = registry.verify(name, "production")
    except (RegistryError, LookupError):
        return None
    runner = OnnxRunner(mv.onnx_path, mv.path / "tokenizer.json")
    predicted = [mv.metadata.labels[i] for i in runner.predict_proba(texts).argmax(axis=1)]
    vocab = sorted(set(labels) | set(predicted))
    index = {label: i for i, label in enumerate(vocab)}
    metrics = compute_metrics(
        [index[x] for x in labels], [index[x] for x in predicted], vocab, with_confusion=False
    )
    return mv.version, metrics


def champion_multi_metrics(
    registry: Registry, name: str, validation: MultiDataset
) -> tuple[str, Metrics] | None:
    """Production's multi-label metrics on the challenger's held-out examples, at its own
    thresholds (labels either side does not know count as misses). A single-label
    production answers one label per text: its answers are sets of one."""
    import numpy as np

    from training.evaluate import OnnxRunner, compute_multi_metrics

    try:
        mv = registry.verify(name, "production")
    except (RegistryError, LookupError):
        return None
    meta = mv.metadata
    runner = OnnxRunner(
        mv.graph_path(cuda=False, allow_int8=True),
        mv.path / "tokenizer.json",
        temperature=meta.temperature,
    )
    probs = runner.predict_proba(list(validation.texts))
    if meta.multi_label is not None:
        chosen = probs >= np.asarray([meta.multi_label.thresholds[x] for x in meta.labels])
    else:
        chosen = np.eye(len(meta.labels), dtype=bool)[probs.argmax(1)]
    vocab = sorted(set(validation.classes) | set(meta.labels))
    where = [vocab.index(x) for x in meta.labels]
    wide_chosen = np.zeros((len(validation), len(vocab)), dtype=bool)
    wide_probs = np.zeros((len(validation), len(vocab)), dtype=np.float32)
    wide_chosen[:, where], wide_probs[:, where] = chosen, probs
    metrics = compute_multi_metrics(validation.matrix(vocab), wide_chosen, wide_probs, vocab)
    return mv.version, metrics


def gate(
    promote: str, challenger: Metrics, champion: Metrics | None, tolerance: float
) -> tuple[bool, str]:
    if promote == "never":
        return False, "promote=never: kept as a candidate"
    if promote == "always":
        return True, "promote=always"
    if champion is None:
        return True, "no production model yet"
    if challenger.macro_f1 >= champion.macro_f1 - tolerance:
        return True, (
            f"challenger macro-F1 {challenger.macro_f1:.4f} >= champion {champion.macro_f1:.4f}"
            f" - tolerance {tolerance:g} on the same {challenger.count} held-out examples"
        )
    return False, (
        f"challenger macro-F1 {challenger.macro_f1:.4f} < champion {champion.macro_f1:.4f}"
        f" - tolerance {tolerance:g} on the same {challenger.count} held-out examples: kept as a candidate"
    )


def promote_candidate(
    registry: Registry,
    candidate: ModelMetadata,
    validation: Dataset | MultiDataset,
    *,
    mode: Mode = "auto",
    tolerance: float = 0.0,
    via_shadow: bool = False,
    shadow_note: str = "",
    outside: Dataset | None = None,
) -> Outcome:
    """Score production on the candidate's validation examples, apply the gate, and move the
    aliases: production (promoted), shadow (`mode="shadow"`, or `via_shadow` with `auto`,
    when a production model exists), or nothing (a candidate)."""
    name = candidate.name
    if isinstance(validation, MultiDataset):
        found = champion_multi_metrics(registry, name, validation)
    else:
        found = champion_metrics(registry, name, list(validation.texts), list(validation.labels))
    champion_version, champion = found if found else (None, None)
    shadow = champion is not None and (mode == "shadow" or (mode == "auto" and via_shadow))
    promoted, why = gate(
        "auto" if mode == "shadow" else mode, candidate.metrics, champion, tolerance
    )
    oos = candidate.out_of_scope
    evidence = oos.evidence if oos is not None else None
    if (
        promoted
        and mode != "always"
        and champion is not None
        and outside is not None
        and len(outside)
    ):
        theirs = champion_out_of_scope_recall(registry, name, list(outside.texts)) or 0.0
        ours = (
            evidence.out_of_scope_recall
            if evidence is not None and evidence.source == "out_of_scope_examples"
            else 0.0
        ) or 0.0
        if ours < theirs - tolerance:
            promoted = False
            off = oos is None or oos.method == "off"
            why = (
                f"challenger out-of-scope recall {ours:.4f} < champion {theirs:.4f}"
                f" - tolerance {tolerance:g} on {len(outside)} out-of-scope examples"
                " (macro-F1 passed): kept as a candidate"
                + (
                    "; its out_of_scope is off: promote it by hand to turn the detector off"
                    if off
                    else ""
                )
            )
        else:
            why += f"; out-of-scope recall {ours:.4f} vs champion {theirs:.4f}"
    if promoted and shadow:
        registry.shadow(name, candidate.version)
        return Outcome(False, True, why + shadow_note, champion_version, champion)
    if promoted:
        registry.promote(name, candidate.version)
    return Outcome(promoted, False, why, champion_version, champion)
