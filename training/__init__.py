"""Training: data, strategy policy, feature extraction, fine-tuning, evaluation, ONNX export.

Heavy modules (torch, transformers) are imported lazily by the functions that need them, so
`import training` and the CLI's registry commands stay fast.
"""

from __future__ import annotations

from models.data import DataError, Dataset, load_dataset
from training.config import PolicyThresholds, TrainConfig
from training.policy import Decision, decide
from training.progress import Cancelled, Progress

__all__ = [
    "Cancelled",
    "DataError",
    "Dataset",
    "Decision",
    "PolicyThresholds",
    "Progress",
    "TrainConfig",
    "decide",
    "load_dataset",
    "train",
]


def __getattr__(name: str):  # lazy: keeps torch out of `import training`
    if name == "train":
        from training.pipeline import train

        return train
    raise AttributeError(name)
