"""Classification metrics, and running an exported model the way the service does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from models import ClassMetrics, Metrics, ModelVersion
from models._detector import Detector
from models._inference import run, score, softmax, unpadded
from models.multilabel import NO_LABEL


def compute_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    labels: Sequence[str],
    *,
    with_confusion: bool = True,
) -> Metrics:
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    ids = list(range(len(labels)))
    present = sorted(set(y_true.tolist()))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    per_class = {
        labels[i]: ClassMetrics(
            precision=round(float(p[i]), 6),
            recall=round(float(r[i]), 6),
            f1=round(float(f[i]), 6),
            support=int(s[i]),
        )
        for i in ids
    }
    # Macro-F1 over the classes present in this evaluation set (sklearn's default when
    # labels= is not given), so a test file with a subset of classes is scored fairly.
    macro_f1 = float(np.mean([f[i] for i in present])) if present else 0.0
    confusion = confusion_matrix(y_true, y_pred, labels=ids).tolist() if with_confusion else None
    return Metrics(
        accuracy=round(float(np.mean(y_true == y_pred)) if len(y_true) else 0.0, 6),
        macro_f1=round(macro_f1, 6),
        count=int(len(y_true)),
        per_class=per_class,
        confusion=confusion,
    )


def compute_multi_metrics(
    y_true: np.ndarray, chosen: np.ndarray, probs: np.ndarray, labels: Sequence[str]
) -> Metrics:
    """Multi-label metrics: `accuracy` is subset accuracy (the whole set right), macro-F1
    over the labels present in `y_true`, micro-F1, Hamming loss; per label P/R/F1/support;
    `predicted_counts` counts each text once, under its most probable chosen label or
    `(none)` for an empty answer (what live traffic records: the drift reference)."""
    from training.multilabel_head import macro_f1, micro_f1

    y, c = y_true.astype(bool), chosen.astype(bool)
    p, r, f, s = precision_recall_fscore_support(y, c, average=None, zero_division=0)
    primary = np.where(c, probs, -1.0).argmax(1)
    answered = c.any(1)
    counts = {label: int(((primary == j) & answered).sum()) for j, label in enumerate(labels)}
    return Metrics(
        accuracy=round(float(np.mean((y == c).all(1))) if len(y) else 0.0, 6),
        macro_f1=round(macro_f1(y, c), 6),
        micro_f1=round(micro_f1(y, c), 6),
        hamming_loss=round(float(np.mean(y != c)) if len(y) else 0.0, 6),
        count=int(len(y)),
        per_class={
            label: ClassMetrics(
                precision=round(float(p[j]), 6),
                recall=round(float(r[j]), 6),
                f1=round(float(f[j]), 6),
                support=int(s[j]),
            )
            for j, label in enumerate(labels)
        },
        mean_confidence=round(float(probs.max(1).mean()), 6) if len(y) else None,
        predicted_counts={**counts, NO_LABEL: int((~answered).sum())},
    )


class OnnxRunner:
    """onnxruntime + tokenizers only: the same path the inference service takes."""

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        *,
        threads: int | None = None,
        temperature: float = 1.0,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.pad_id = unpadded(self.tokenizer)
        self.temperature = temperature
        # the last few answers: packaging asks the same texts of a graph more than once
        # (validation metrics, then the int8 and fp16 guards)
        self._recent: dict[tuple, np.ndarray] = {}

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Calibrated probabilities (by `temperature`), as served."""
        key = (tuple(texts), self.temperature, batch_size)
        if key in self._recent:
            return self._recent[key].copy()
        if self.temperature == 1.0:
            probs = self.outputs(texts, ("probabilities",), batch_size)[0]
        else:
            probs = softmax(self.predict_logits(texts, batch_size) / self.temperature)
        if len(self._recent) >= 4:
            self._recent.pop(next(iter(self._recent)))
        self._recent[key] = probs
        return probs.copy()

    def predict_logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self.outputs(texts, ("logits",), batch_size)[0]

    def outputs(
        self, texts: Sequence[str], names: Sequence[str], batch_size: int = 64
    ) -> list[np.ndarray]:
        """The graph's named outputs, run in chunks of `batch_size` texts."""
        chunks = [
            run(
                self.session,
                self.tokenizer,
                texts[i : i + batch_size],
                pad_id=self.pad_id,
                outputs=names,
            )
            for i in range(0, len(texts), batch_size)
        ]
        if not chunks:
            return [np.zeros((0, 0), np.float32) for _ in names]
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


def out_of_scope_flags(mv: ModelVersion, texts: Sequence[str]) -> np.ndarray:
    """Which of `texts` the version answers out of scope, as CPU serving would (its served
    graph, temperature and detector; all False for a version without a detector)."""
    runner = OnnxRunner(
        mv.graph_path(cuda=False, allow_int8=True),
        mv.path / "tokenizer.json",
        temperature=mv.metadata.temperature,
    )
    detector = Detector.for_version(mv.metadata.out_of_scope, mv.path)
    return score(
        runner.session,
        runner.tokenizer,
        list(texts),
        pad_id=runner.pad_id,
        temperature=runner.temperature,
        detector=detector,
    ).out_of_scope
