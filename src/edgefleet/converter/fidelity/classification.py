"""Classification outputs: top-1 accuracy against labels, or top-1 agreement with the fp32 model."""

from __future__ import annotations

import numpy as np


def top1(scores: np.ndarray) -> np.ndarray:
    """The predicted class of each sample (argmax over everything but the batch axis)."""
    return scores.reshape(len(scores), -1).argmax(axis=1)


def top1_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Percent of samples whose top-1 class is the label."""
    return round(float((top1(scores) == labels.reshape(-1)).mean() * 100), 2)


def top1_agreement(fp32: np.ndarray, artifact: np.ndarray) -> float:
    """Percent of samples where the artifact's top-1 class is the fp32 model's."""
    return round(float((top1(fp32) == top1(artifact)).mean() * 100), 2)
