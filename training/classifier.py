"""Encoder + mean pooling + L2 normalisation + linear head: tokens in, probabilities out."""

from __future__ import annotations

import torch
from torch import nn


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class SentenceClassifier(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        num_labels: int,
        *,
        normalize: bool = True,
        multi_label: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize
        self.multi_label = multi_label  # one sigmoid per label instead of one softmax
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = mean_pool(hidden, attention_mask)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2.0, dim=-1)
        return pooled

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.embed(input_ids, attention_mask).to(self.head.weight.dtype))
        return self.activate(logits), logits

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities: softmax over the classes, or a sigmoid per label (multi-label)."""
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def set_head(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)
