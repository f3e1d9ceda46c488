"""Per-output metrics of the report: top-1 with labels (first output), top-1 agreement and SQNR vs fp32."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgefleet.converter.fidelity.outputs import measure_output
from edgefleet.converter.steps.layer_error import MAX_SQNR_DB, sqnr_db


def test_top1_with_labels_and_agreement_and_sqnr() -> None:
    fp32 = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)
    artifact = fp32.copy()
    artifact[3] = [0.4, 0.6]  # one prediction flips
    labels = np.array([1, 0, 1, 0])
    metrics = measure_output("logits", "classification", fp32, artifact, labels)
    assert (metrics.metric, metrics.fp32, metrics.artifact) == ("top1", 100.0, 75.0)
    assert metrics.drop_points == 25.0 and metrics.agreement == 75.0
    noise = float(np.sum((fp32 - artifact) ** 2))
    assert metrics.sqnr_db == pytest.approx(10 * math.log10(float(np.sum(fp32**2)) / noise), abs=0.01)


def test_without_labels_the_drop_is_the_disagreement() -> None:
    fp32 = np.eye(4, dtype=np.float32)
    artifact = fp32[[0, 1, 2, 0]]
    metrics = measure_output("scores", "classification", fp32, artifact, None)
    assert (metrics.metric, metrics.fp32, metrics.artifact, metrics.drop_points) == (
        "top1_agreement",
        None,
        75.0,
        25.0,
    )


def test_sqnr_of_identical_tensors_is_capped_and_finite() -> None:
    x = np.ones(8, np.float32)
    assert sqnr_db(x, x) == MAX_SQNR_DB
    assert sqnr_db(np.zeros(8, np.float32), x) == 0.0  # no signal: nothing survives quantization
