"""Measures for any tensor output: SQNR (dB) and cosine similarity of the artifact's values against fp32's,
what judges outputs whose task is not known."""

from __future__ import annotations

import numpy as np

from edgefleet.converter.steps.layer_error import sqnr_db

__all__ = ["cosine_similarity", "sqnr_db"]


def cosine_similarity(fp32: np.ndarray, artifact: np.ndarray) -> float:
    """Mean over samples of the cosine of the angle between fp32's and the artifact's values (1: same
    direction). A sample that is all zeros in both counts as 1, in one only as 0."""
    a = fp32.reshape(len(fp32), -1).astype(np.float64)
    b = artifact.reshape(len(artifact), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    cosine = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), 0.0)
    cosine = np.where(both_zero, 1.0, cosine)
    return round(float(cosine.mean()), 6) if len(cosine) else 1.0
