"""Reduced-precision graphs: int8 for CPU serving and fp16 for CUDA, each with the gate that
decides whether it is served.

The guard measures the model, not the noise of a small validation split: it compares the
int8 graph's decisions with fp32's on every text available at training time (training +
validation texts, labels not needed; at most `GUARD_TEXTS`), and runs a paired test on the
validation split where labels exist. `auto` serves int8 when

- top-1 agreement (multi-label: the same label set) is at least `AGREEMENT_BAR`,
- no class is flipped often: the lower end of the 95% Wilson interval of any class's
  flip rate (texts fp32 gives that class which int8 does not) is at most
  `CLASS_FLIP_BAR`, so one flip of a class seen 8 times does not count, a class that loses
  a third of its texts does,
- and the paired test (exact one-sided McNemar on validation: texts only fp32 gets right
  vs texts only int8 gets right) finds no loss at `PAIRED_ALPHA`.

Agreement bounds the accuracy change: int8's accuracy is within (1 − agreement) of fp32's
on the same texts, whatever the labels. Variants tried on Banking77 at 8 per class (one
run; `bench/quant_guard.py` has the per-data-set decisions): excluding the classifier head
changed nothing (the dynamic quantizer leaves its Gemm in fp32 already); MatMul-only
(fp32 attention) agreed as often on held-out texts and was slower; static per-channel QDQ
calibrated on training texts agreed more (99.8% vs 98.5% on 1,500 test texts) but ran
slower than fp32 on CPU (no fused int8 kernels for QDQ attention). Dynamic per-channel
int8 over the fused graph is kept.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import HalfPrecisionReport, QuantizationReport

log = logging.getLogger(__name__)

INT8_FILE = "model.int8.onnx"
METHOD = "dynamic int8, per-channel"
AGREEMENT_BAR = 0.99  # top-1 agreement with fp32 on the training-time texts
CLASS_FLIP_BAR = 0.05  # largest per-class flip rate allowed (low end of its 95% interval)
PAIRED_ALPHA = 0.05  # one-sided McNemar on validation: a loss this significant refuses int8
GUARD_TEXTS = 2000  # training-time texts the guard scores with both graphs (a fixed sample)
FP16_FILE = "model.fp16.onnx"
# fp16 keeps ~3 significant digits: probabilities move by ~1e-3 (7.7e-4 measured on a MiniLM
# Banking77 model, 400 texts, CPU); a graph 10x further off than that is not served
FP16_TOLERANCE = 1e-2


def quantize_graph(onnx_path: Path) -> Path:
    """`model.int8.onnx` beside `onnx_path`: dynamic per-channel int8 weights."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = onnx_path.with_name(INT8_FILE)
    quantize_dynamic(
        str(onnx_path),
        str(target),
        per_channel=True,
        weight_type=QuantType.QInt8,
        # fused contrib operators have no inferred output types; they are all float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return target


def guard_texts(*splits: Sequence[str], limit: int = GUARD_TEXTS) -> list[str]:
    """The training-time texts the guard judges on: all of them, or a fixed sample."""
    texts = list(dict.fromkeys(t for split in splits for t in split))
    if len(texts) > limit:
        texts = random.Random(0).sample(texts, limit)
    return texts


@dataclass(frozen=True)
class Agreement:
    rate: float
    texts: int
    worst_class: str | None
    worst_flips: int
    worst_count: int

    @property
    def worst_lower_bound(self) -> float:
        return wilson_lower(self.worst_flips, self.worst_count)


def agreement(fp32: np.ndarray, int8: np.ndarray, labels: Sequence[str]) -> Agreement:
    """Decisions of both graphs on the same texts: (texts,) class ids for single-label
    versions, (texts, labels) booleans for multi-label ones (a text agrees when its label
    set is the same; a label flips on a text fp32 gives it and int8 does not)."""
    if fp32.ndim == 1:
        same = fp32 == int8
        given = [fp32 == c for c in range(len(labels))]
        flips = [int(np.sum(g & ~same)) for g in given]
    else:
        same = np.all(fp32 == int8, axis=1)
        given = [fp32[:, c] for c in range(len(labels))]
        flips = [int(np.sum(g & ~int8[:, c])) for c, g in enumerate(given)]
    counts = [int(np.sum(g)) for g in given]
    bounds = [wilson_lower(f, n) for f, n in zip(flips, counts, strict=True)]
    worst = int(np.argmax(bounds)) if bounds else None
    return Agreement(
        rate=float(np.mean(same)) if len(same) else 1.0,
        texts=len(same),
        worst_class=labels[worst] if worst is not None and flips[worst] else None,
        worst_flips=flips[worst] if worst is not None else 0,
        worst_count=counts[worst] if worst is not None else 0,
    )


def wilson_lower(k: int, n: int, z: float = 1.959964) -> float:
    """Lower end of the 95% Wilson score interval of a proportion k/n (0 for n = 0): a
    one-sided 97.5% lower bound."""
    if n == 0:
        return 0.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def paired_loss(fp32_right: np.ndarray, int8_right: np.ndarray) -> tuple[int, int, float]:
    """Exact one-sided McNemar test: (texts only fp32 gets right, texts only int8 gets
    right, p-value of int8 being worse)."""
    from scipy.stats import binomtest

    lost = int(np.sum(fp32_right & ~int8_right))
    won = int(np.sum(int8_right & ~fp32_right))
    if lost + won == 0:
        return lost, won, 1.0
    return lost, won, float(binomtest(lost, lost + won, 0.5, alternative="greater").pvalue)


def judge_int8(
    full: Any,
    quantized: Any,
    *,
    texts: Sequence[str],
    validation: Sequence[str],
    truth: np.ndarray,
    decide: Callable[[np.ndarray], np.ndarray],
    labels: Sequence[str],
    **policy: Any,
) -> QuantizationReport:
    """Both graphs (fp32 `full`, int8 `quantized`: `predict_proba` runners) on the training-time `texts` and on the
    labeled `validation` texts (`truth`: what `decide` makes of probabilities when right),
    then the policy (`choose_int8`'s other arguments)."""
    p32, p8 = full.predict_proba(list(texts)), quantized.predict_proba(list(texts))
    agreed = agreement(decide(p32), decide(p8), labels)
    v32 = decide(full.predict_proba(list(validation)))
    v8 = decide(quantized.predict_proba(list(validation)))
    right32, right8 = v32 == truth, v8 == truth
    if right32.ndim == 2:  # multi-label: a text is right when its whole label set is
        right32, right8 = right32.all(axis=1), right8.all(axis=1)
    paired = paired_loss(right32, right8)
    diff = float(np.max(np.abs(p32 - p8))) if len(texts) else 0.0
    return choose_int8(agreed=agreed, max_abs_diff=diff, paired=paired, **policy)


def int8_problems(agreed: Agreement, p_value: float) -> list[str]:
    """Why `auto` would refuse the int8 graph (empty: it is served)."""
    problems = []
    if agreed.rate < AGREEMENT_BAR:
        problems.append(f"agreement below {AGREEMENT_BAR:.0%}")
    if agreed.worst_lower_bound > CLASS_FLIP_BAR:
        problems.append(
            f"class {agreed.worst_class} flips {agreed.worst_flips} of {agreed.worst_count}"
            f" (more than {CLASS_FLIP_BAR:.0%} even at the low end of its 95% interval)"
        )
    if p_value < PAIRED_ALPHA:
        problems.append(f"a significant validation loss (p={p_value:.2g} < {PAIRED_ALPHA})")
    return problems


def choose_int8(
    *,
    policy: str,
    agreed: Agreement,
    max_abs_diff: float,
    paired: tuple[int, int, float],
    fp32: float,
    int8: float,
    count: int,
    staging: Path,
    metric: str = "macro_f1",
) -> QuantizationReport:
    """The policy: `auto` serves int8 on CPU when the guard above passes, `always` serves
    it anyway; the evidence and the reason are recorded. A graph not served is not kept."""
    lost, won, p = paired
    name = metric.replace("_f1", "-F1")
    evidence = (
        f"agreement {agreed.rate:.2%} on {agreed.texts} training-time texts"
        + (
            f", worst class {agreed.worst_class} {agreed.worst_flips}/{agreed.worst_count}"
            if agreed.worst_class
            else ""
        )
        + f"; validation {name} int8 {int8:.4f} vs fp32 {fp32:.4f} on {count} examples"
        f" ({lost} lost, {won} gained, paired p={p:.2g})"
    )
    problems = int8_problems(agreed, p)
    if policy == "always":
        served, reason = True, f"quantize=always: int8 served on CPU ({evidence})"
    elif not problems:
        served, reason = True, f"int8 served on CPU: {evidence}"
    else:
        served, reason = False, f"fp32 served: int8 has {'; '.join(problems)} ({evidence})"
    if not served:
        (staging / INT8_FILE).unlink(missing_ok=True)
    log.info("%s", reason)
    return QuantizationReport(
        method=METHOD,
        argmax_agreement=round(agreed.rate, 6),
        max_abs_diff=round(max_abs_diff, 6),
        examples=agreed.texts,
        file=INT8_FILE if served else None,
        policy=policy,
        metric=metric,
        fp32_macro_f1=fp32,
        int8_macro_f1=int8,
        served_on_cpu=served,
        reason=reason,
        worst_class=agreed.worst_class,
        worst_class_flips=agreed.worst_flips,
        worst_class_count=agreed.worst_count,
        paired_lost=lost,
        paired_gained=won,
        paired_p_value=round(p, 6),
    )


def wants_fp16(policy: str) -> bool:
    """`always`, or `auto` where this training host has a GPU (torch or onnxruntime sees it)."""
    if policy != "auto":
        return policy == "always"
    import onnxruntime as ort
    import torch

    return torch.cuda.is_available() or "CUDAExecutionProvider" in ort.get_available_providers()


def half_graph(onnx_path: Path) -> Path:
    """`model.fp16.onnx` beside `onnx_path`: weights and activations in float16, inputs and
    outputs as the fp32 graph has them (onnxruntime's transformer float16 converter)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(onnx_path)))
    model.convert_float_to_float16(keep_io_types=True)
    target = onnx_path.with_name(FP16_FILE)
    model.save_model_to_file(str(target))
    return target


def judge_fp16(
    full: Any,
    half: Any,
    *,
    parity: Sequence[str],
    texts: Sequence[str],
    decide: Callable[[np.ndarray], np.ndarray],
    labels: Sequence[str],
    staging: Path,
    tolerance: float = FP16_TOLERANCE,
) -> HalfPrecisionReport:
    """The fp16 gate (runners as in `judge_int8`; the training code runs them on CPU, so
    the CUDA kernels that serve fp16 are not what is gated — unmeasured without a GPU):
    parity on the export's parity texts within `tolerance`, and agreement on the
    training-time texts by the int8 rule. A graph that fails is not published."""
    expected, actual = full.predict_proba(list(parity)), half.predict_proba(list(parity))
    diff = float(np.max(np.abs(expected - actual))) if len(parity) else 0.0
    agreed = agreement(
        decide(full.predict_proba(list(texts))), decide(half.predict_proba(list(texts))), labels
    )
    problems = int8_problems(agreed, 1.0)
    if not np.isfinite(diff) or diff > tolerance:
        problems.insert(0, f"parity {diff:.2e} > {tolerance:.0e}")
    evidence = (
        f"max |p_fp16 - p_fp32| {diff:.2e} on {len(parity)} texts, agreement"
        f" {agreed.rate:.2%} on {agreed.texts} training-time texts"
    )
    served = not problems
    if served:
        reason = f"fp16 served on CUDA: {evidence}"
    else:
        reason = f"fp32 served on CUDA: the fp16 graph has {'; '.join(problems)} ({evidence})"
        (staging / FP16_FILE).unlink(missing_ok=True)
        log.warning("%s", reason)
    return HalfPrecisionReport(
        file=FP16_FILE if served else None,
        parity_max_abs_diff=round(diff, 6) if np.isfinite(diff) else 1.0,
        argmax_agreement=round(agreed.rate, 6),
        examples=agreed.texts,
        served_on_cuda=served,
        reason=reason,
    )
