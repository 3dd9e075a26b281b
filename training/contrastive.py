"""Few-shot adaptation of the encoder: SetFit's contrastive idea, with in-batch pairs.

SetFit (Tunstall et al. 2022) fine-tunes the sentence encoder so that same-label pairs get
cosine similarity 1 and different-label pairs 0, then fits a logistic-regression head on
the adapted embeddings. It builds pairs explicitly (two encoder passes per pair, 20 pairs
per example by default). Here every step encodes one class-balanced batch once and uses
*all* pairs in it (a batch of 32 gives 496 pairs for the cost of 32 sentences), with the
positive and negative pairs weighted equally. Same loss, far fewer encoder passes: this is
what lets the stage fit a small time budget on a CPU.

Written by hand (~80 lines) rather than depending on `setfit`: SetFit pins
sentence-transformers and datasets, writes checkpoints through the hub API, and its pair
sampler is the cost we want to avoid.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from training.classifier import SentenceClassifier
from training.finetune import _collate, _encode

log = logging.getLogger(__name__)


@dataclass
class ContrastiveResult:
    steps: int
    seconds: float
    final_loss: float
    stopped: str


def balanced_batch(
    by_class: dict[int, list[int]], batch_size: int, per_class: int, rng: random.Random
) -> list[int]:
    """`per_class` examples from each of batch_size // per_class random classes."""
    classes = list(by_class)
    n_classes = min(len(classes), max(2, batch_size // per_class))
    chosen = rng.sample(classes, n_classes)
    batch: list[int] = []
    for c in chosen:
        members = by_class[c]
        k = min(per_class, len(members))
        batch += rng.sample(members, k)
    return batch


def pair_loss(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error of cosine similarity against same-label (1) / different (0),
    positives and negatives weighted equally (SetFit's CosineSimilarityLoss, all pairs)."""
    unit = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    sim = unit @ unit.T
    same = labels[:, None] == labels[None, :]
    upper = torch.triu(torch.ones_like(same), diagonal=1)
    pos = same & upper
    neg = ~same & upper
    loss = sim.new_zeros(())
    if pos.any():
        loss = loss + ((sim[pos] - 1.0) ** 2).mean()
    if neg.any():
        loss = loss + (sim[neg] ** 2).mean()
    return loss


def contrastive_adapt(
    model: SentenceClassifier,
    tokenizer,
    texts: Sequence[str],
    labels: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    per_class: int,
    learning_rate: float,
    max_length: int,
    device: torch.device,
    seed: int,
    time_budget_s: float | None = None,
    on_step: Callable[[int, int, str], None] | None = None,
) -> ContrastiveResult:
    """Train `model.encoder` in place on in-batch pairs; the head is not touched."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model.to(device).train()
    ids = _encode(tokenizer, texts, max_length)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels.tolist()):
        by_class.setdefault(int(y), []).append(i)
    params = list(model.encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    warmup = max(1, int(0.1 * steps))

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    started = time.perf_counter()
    stopped = "completed"
    loss_value = float("nan")
    done = 0
    for step in range(steps):
        idx = balanced_batch(by_class, batch_size, per_class, rng)
        input_ids, mask, y = _collate(ids, idx, labels, tokenizer.pad_token_id, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            emb = model.embed(input_ids, mask)
        loss = pair_loss(emb, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        done = step + 1
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(done, steps, f"contrastive step {done}/{steps}")
        elapsed = time.perf_counter() - started
        if time_budget_s is not None and elapsed * (done + 1) / done > time_budget_s:
            if done < steps:
                stopped = f"time budget ({time_budget_s:.0f} s) reached after step {done}"
            break
    seconds = time.perf_counter() - started
    log.info("contrastive adaptation: %d steps, loss %.4f, %.0f s", done, loss_value, seconds)
    model.eval()
    return ContrastiveResult(done, round(seconds, 1), round(loss_value, 5), stopped)
