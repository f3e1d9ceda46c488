"""Segmentation and probability maps: the IoU of the artifact's thresholded mask with fp32's, per sample."""

from __future__ import annotations

import numpy as np

PROBABILITY_THRESHOLD = 0.5


def mask_threshold(fp32: np.ndarray) -> float:
    """0.5 for probability maps (fp32 within [0, 1]); 0 for logit maps (both signs: sigmoid(0) = 0.5);
    otherwise half the fp32 map's maximum (e.g. a non-negative heat map)."""
    low, high = float(fp32.min()), float(fp32.max())
    if low >= 0 and high <= 1:
        return PROBABILITY_THRESHOLD
    if low < 0 < high:
        return 0.0
    return high / 2


def mask_iou(fp32: np.ndarray, artifact: np.ndarray, threshold: float) -> float:
    """Mean over samples of |A & B| / |A | B| of the masks `map > threshold`, percent; a sample where both
    masks are empty agrees fully (100)."""
    a = fp32.reshape(len(fp32), -1) > threshold
    b = artifact.reshape(len(artifact), -1) > threshold
    union = (a | b).sum(axis=1)
    inter = (a & b).sum(axis=1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return round(float(iou.mean() * 100), 2) if len(iou) else 100.0
