"""Fine-tuning all weights, LP-FT style: the head starts from the tuned linear probe.

AdamW (bias-corrected), enough optimizer steps for small data (`min_steps`), linear warmup
then linear decay over the planned steps, gradient clipping, length-grouped batches with
dynamic padding, noise-aware checkpoint choice and early stopping on validation macro-F1; CUDA with autocast (bf16) when available. One log line per epoch and every `log_every` steps.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import f1_score
from transformers import get_linear_schedule_with_warmup

from training.classifier import SentenceClassifier
from training.config import TrainConfig
from training.evidence import noise_margin

log = logging.getLogger(__name__)


@dataclass
class FineTuneResult:
    best_epoch: int  # the epoch whose weights were kept
    best_macro_f1: float
    recipe: Recipe | None = None
    val_pred: np.ndarray | None = None  # validation predictions of the kept weights
    history: list[dict[str, float]] = field(default_factory=list)
    samples_per_s: float = 0.0
    stopped: str = "completed"


def _encode(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated, unpadded: tokenized once, padded per batch."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def _collate(ids: list[list[int]], idx: Sequence[int], labels: np.ndarray, pad_id: int, device):
    width = max(len(ids[i]) for i in idx)
    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        input_ids[row, : len(ids[i])] = torch.as_tensor(ids[i])
        mask[row, : len(ids[i])] = 1
    return input_ids.to(device), mask.to(device), torch.as_tensor(labels[list(idx)], device=device)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, group: int = 50
) -> list[list[int]]:
    """Shuffled batches of similar-length examples (padding is most of the cost otherwise).

    The order is shuffled, cut into windows of `group` batches, each window sorted by
    length and cut into batches, and the batches shuffled: the same idea as the
    `group_by_length` sampler in transformers' Trainer. On Banking77 it cuts the padded
    tokens per epoch from 2.9x to 1.06x the real tokens.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * group
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class Objective:
    """What fine-tuning minimises and how validation judges it: `loss(logits, targets)`,
    `decide(logits) -> predictions` (as `score` reads them), `score(targets, predictions)`
    under the name `metric`."""

    metric: str
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    decide: Callable[[np.ndarray], np.ndarray]
    score: Callable[[np.ndarray, np.ndarray], float]


# one label per text: cross-entropy, judged on validation macro-F1 of the argmax
SINGLE_LABEL = Objective(
    "macro_f1",
    lambda logits, y: torch.nn.functional.cross_entropy(logits, y),
    lambda logits: logits.argmax(axis=1),
    lambda y, pred: float(f1_score(y, pred, average="macro", zero_division=0)),
)


@torch.inference_mode()
def predict(
    model: SentenceClassifier,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int,
    device,
    objective: Objective = SINGLE_LABEL,
) -> np.ndarray:
    model.eval()
    encoded = _encode(tokenizer, texts, max_length)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    out = np.zeros((len(texts), model.head.out_features), dtype=np.float32)
    dummy = np.zeros(len(texts), dtype=np.int64)
    for pos in range(0, len(order), batch_size):
        idx = order[pos : pos + batch_size]
        ids, mask, _ = _collate(encoded, idx, dummy, tokenizer.pad_token_id, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            _, logits = model(ids, mask)
        out[idx] = logits.float().cpu().numpy()
    return objective.decide(out)


@dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int
    learning_rate: float
    head_learning_rate: float
    small_data: bool


def plan_recipe(config: TrainConfig, examples: int) -> Recipe:
    """Epochs, batch size and learning rates for `examples` training examples.

    `config.epochs` set: exactly that (at most), with the configured batch and rates.
    Otherwise, when 4 epochs at the configured batch would give fewer than
    `config.min_steps` optimizer steps (small data: a few hundred examples), the
    small-data recipe: smaller batches, higher rates, and enough epochs to reach
    `min_steps` (at most `max_epochs`); else 4 epochs as configured.
    """
    enough = 4 * math.ceil(examples / config.batch_size) >= config.min_steps
    if config.epochs is not None or enough:
        return Recipe(
            config.epochs or 4,
            config.batch_size,
            config.learning_rate,
            config.head_learning_rate,
            False,
        )
    batch = config.small_data_batch_size
    steps_per_epoch = max(1, math.ceil(examples / batch))
    epochs = max(4, min(config.max_epochs, math.ceil(config.min_steps / steps_per_epoch)))
    return Recipe(
        epochs,
        batch,
        config.small_data_learning_rate,
        config.small_data_head_learning_rate,
        True,
    )


def fine_tune(
    model: SentenceClassifier,
    tokenizer,
    train_texts: Sequence[str],
    train_labels: np.ndarray,
    val_texts: Sequence[str],
    val_labels: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    *,
    time_budget_s: float | None,
    on_step: Callable[[int, int, str], None] | None = None,
    log_every: int = 50,
    objective: Objective = SINGLE_LABEL,
) -> FineTuneResult:
    """Train in place; on return `model` holds the weights chosen on validation.

    The schedule fits the step count (warmup, then linear decay to zero over all planned
    steps). Validation runs about ten times in all (every epoch for short runs). The kept
    checkpoint is the *latest* one within one standard error of the best score so far:
    on a small validation split a higher score a few epochs earlier is noise, and more
    training is the better bet. Early stopping needs `patience + 1` evaluations in a row
    below the best minus that margin, so a flat or noisy curve never ends the run.
    """
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    recipe = plan_recipe(config, len(train_texts))
    model.to(device)
    head_params = list(model.head.parameters())
    head_ids = {id(p) for p in head_params}
    decay, no_decay = [], []
    for name, p in model.encoder.named_parameters():
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay, "lr": recipe.learning_rate},
            {"params": no_decay, "weight_decay": 0.0, "lr": recipe.learning_rate},
            {"params": head_params, "weight_decay": 0.0, "lr": recipe.head_learning_rate},
        ]
    )
    assert not any(id(p) in head_ids for p in decay + no_decay)
    encoded = _encode(tokenizer, train_texts, config.max_length)
    lengths = [len(ids) for ids in encoded]
    steps_per_epoch = math.ceil(len(train_texts) / recipe.batch_size)
    epochs = recipe.epochs
    total = steps_per_epoch * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    eval_every = max(1, math.ceil(epochs / 10))

    best_state = None
    result = FineTuneResult(best_epoch=0, best_macro_f1=-1.0, recipe=recipe)
    started = time.perf_counter()
    seen = 0
    train_time = 0.0  # excludes validation passes
    running_max = -1.0
    bad_evals = 0
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        epoch_started = time.perf_counter()
        epoch_loss = 0.0
        for idx in length_grouped_batches(lengths, recipe.batch_size, rng):
            ids, mask, y = _collate(encoded, idx, train_labels, tokenizer.pad_token_id, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                _, logits = model(ids, mask)
            loss = objective.loss(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            seen += len(y)
            epoch_loss += loss.detach().item() * len(y)
            if step % log_every == 0:  # nanoGPT-style: step, loss, lr, ms/step
                elapsed = time.perf_counter() - started
                log.info(
                    "epoch %d step %d/%d loss %.4f lr %.2e %.0f ms/step",
                    epoch,
                    step,
                    total,
                    loss.detach().item(),
                    scheduler.get_last_lr()[0],
                    1000 * elapsed / step,
                )
            if on_step is not None:
                on_step(step, total, f"epoch {epoch}/{epochs}")
        train_time += time.perf_counter() - epoch_started
        elapsed = time.perf_counter() - started
        per_epoch = elapsed / epoch
        out_of_time = (
            time_budget_s is not None and elapsed + per_epoch > time_budget_s and epoch < epochs
        )
        if epoch % eval_every and epoch < epochs and not out_of_time:
            continue
        pred = predict(
            model,
            tokenizer,
            val_texts,
            max_length=config.max_length,
            batch_size=64,
            device=device,
            objective=objective,
        )
        score = objective.score(val_labels, pred)
        elapsed = time.perf_counter() - started
        result.history.append(
            {
                "epoch": epoch,
                "loss": round(epoch_loss / len(train_texts), 5),
                f"val_{objective.metric}": round(score, 6),
                "elapsed_s": round(elapsed, 1),
            }
        )
        log.info(
            "epoch %d done: loss %.4f validation %s %.4f (%.0f s)",
            epoch,
            epoch_loss / len(train_texts),
            objective.metric,
            score,
            elapsed,
        )
        running_max = max(running_max, score)
        margin = noise_margin(running_max, len(val_labels))
        if score >= running_max - margin:
            result.best_macro_f1, result.best_epoch = score, epoch
            result.val_pred = pred
            best_state = copy.deepcopy(model.state_dict())
            bad_evals = 0
        else:
            bad_evals += 1
        if bad_evals > config.patience:
            result.stopped = (
                f"early stop after epoch {epoch}: {bad_evals} evaluations in a row more than "
                f"{margin:.4f} (one standard error) below the best {running_max:.4f}"
            )
            break
        if out_of_time:
            result.stopped = f"time budget ({time_budget_s:.0f} s) reached after epoch {epoch}"
            break
    result.samples_per_s = round(seen / max(train_time, 1e-9), 1)
    if best_state is not None:
        model.load_state_dict(best_state)
    return result
