"""Per-output fidelity: each output measured by the measure of its kind, plus SQNR and cosine similarity
against fp32 for every output; the labels `y` score the first classification output."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgefleet.converter.errors import ConversionError
from edgefleet.converter.fidelity.classification import top1_accuracy, top1_agreement
from edgefleet.converter.fidelity.ctc import string_equality
from edgefleet.converter.fidelity.detection import detection_f1
from edgefleet.converter.fidelity.kinds import KindSource, OutputKind
from edgefleet.converter.fidelity.segmentation import mask_iou, mask_threshold
from edgefleet.converter.fidelity.tensor import cosine_similarity, sqnr_db

Measure = Literal["top1", "top1_agreement", "detection_f1", "mask_iou", "ctc_string_equality", "sqnr"]
MEASURE_LABELS: dict[str, str] = {
    "top1": "top-1 vs labels",
    "top1_agreement": "top-1 agreement with fp32",
    "detection_f1": "detection F1 vs fp32",
    "mask_iou": "mask IoU vs fp32",
    "ctc_string_equality": "CTC string equality with fp32",
    "sqnr": "SQNR/cosine vs fp32",
    "custom": "custom metric",
}


class OutputMetrics(BaseModel):
    """One model output, artifact vs fp32 on the evaluation set. `artifact` is the value of `metric` in
    `unit`; percentage measures also give `drop_points` (fp32 - artifact with labels, else 100 - artifact);
    every output gets its SQNR and cosine similarity against fp32."""

    model_config = ConfigDict(extra="forbid")

    output: str
    kind: OutputKind = "classification"  # defaults: how reports written before output kinds read
    kind_source: KindSource = "shape"
    metric: Measure
    unit: Literal["%", "dB"] = "%"
    fp32: float | None  # the fp32 model's own score (top-1 with labels), else null
    artifact: float
    drop_points: float | None  # percentage measures; null for SQNR (its budget is a floor in dB)
    agreement: float | None  # classification: top-1 agreement with fp32, %; else null
    sqnr_db: float  # fp32 output power over (fp32 - artifact) power, dB
    cosine: float | None = None  # mean per-sample cosine similarity with fp32
    detail: str | None = None  # how the measure was taken (boxes matched, mask threshold, strings differing)
    budget: str | None = None  # the bound it was held to ("drop <= 1.00 points", "SQNR >= 15.0 dB")
    within_budget: bool | None = None


def measure_output(
    name: str,
    kind: OutputKind,
    fp32: np.ndarray,
    artifact: np.ndarray,
    labels: np.ndarray | None = None,
    source: KindSource = "shape",
    allow_low_accuracy: bool = False,
) -> OutputMetrics:
    """`labels` apply to classification outputs only (top-1 vs labels instead of agreement); labels that
    cannot be class indices of this output, or an fp32 model at or below chance against them (unless
    `allow_low_accuracy`), are a ConversionError: every figure after would be meaningless."""
    if fp32.shape != artifact.shape:
        raise ConversionError(
            f"output '{name}': the artifact gives shape {artifact.shape}, fp32 {fp32.shape}; they cannot be "
            "compared"
        )
    sqnr = round(sqnr_db(fp32, artifact), 2)
    measured = OutputMetrics(
        output=name,
        kind=kind,
        kind_source=source,
        metric="sqnr",
        unit="dB",
        fp32=None,
        artifact=sqnr,
        drop_points=None,
        agreement=None,
        sqnr_db=sqnr,
        cosine=cosine_similarity(fp32, artifact),
    )
    update: dict[str, object]
    if kind == "tensor":
        return measured
    if kind == "classification":
        agreement = top1_agreement(fp32, artifact)
        update = {"metric": "top1_agreement", "artifact": agreement, "drop_points": round(100 - agreement, 2)}
        if labels is not None:
            check_labels(name, labels, fp32.shape[-1])
            acc_fp32, acc_artifact = top1_accuracy(fp32, labels), top1_accuracy(artifact, labels)
            chance = 100.0 / fp32.shape[-1]
            if acc_fp32 <= chance and not allow_low_accuracy:
                raise ConversionError(
                    f"output '{name}': the fp32 model itself scores {acc_fp32:.2f}% top-1 against the labels "
                    f"`y` ({whole_samples(acc_fp32, len(labels))}), no better than chance "
                    f"({chance:.2f}% for {fp32.shape[-1]} classes): the labels are likely off by one or in "
                    "another class order. Fix them, or pass --allow-low-accuracy to convert anyway"
                )
            update = {
                "metric": "top1",
                "fp32": acc_fp32,
                "artifact": acc_artifact,
                "drop_points": round(acc_fp32 - acc_artifact, 2),
            }
        return measured.model_copy(update={"unit": "%", "agreement": agreement, **update})
    if kind == "detection":
        value, detail = detection_f1(fp32, artifact, name)
        update = {"metric": "detection_f1", "detail": detail}
    elif kind == "segmentation":
        threshold = mask_threshold(fp32)
        value = mask_iou(fp32, artifact, threshold)
        update = {"metric": "mask_iou", "detail": f"masks: values > {threshold:.4g}"}
    else:
        value, differ = string_equality(fp32, artifact, name)
        detail = f"{differ} of {len(fp32)} decoded strings differ (greedy CTC, blank 0)"
        update = {"metric": "ctc_string_equality", "detail": detail}
    return measured.model_copy(
        update={"unit": "%", "artifact": value, "drop_points": round(100 - value, 2), **update}
    )


def whole_samples(points: float, samples: int) -> str:
    """A per-sample measure's percentage points as whole samples: "1 of 360 samples"."""
    return f"{round(abs(points) * samples / 100)} of {samples} samples"


def check_labels(name: str, labels: np.ndarray, classes: int) -> None:
    """Labels `y` must be whole class indices 0..classes-1 of the output they score."""
    values = labels.reshape(-1)
    if values.size and (not np.all(np.isfinite(values)) or not np.all(values == np.round(values))):
        raise ConversionError(
            f"labels `y` for output '{name}' must be whole class indices, got {values.dtype} values"
        )
    if values.size and (values.min() < 0 or values.max() >= classes):
        raise ConversionError(
            f"labels `y` run from {values.min():g} to {values.max():g}, but output '{name}' has {classes} "
            f"classes (0..{classes - 1}): are the labels 1-based, or for another model?"
        )


def measure_outputs(
    kinds: Mapping[str, tuple[OutputKind, KindSource]],
    fp32: Mapping[str, np.ndarray],
    artifact: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    allow_low_accuracy: bool = False,
) -> list[OutputMetrics]:
    """Every output in the source model's order; labels score the first classification output."""
    labelled = next((name for name, (kind, _) in kinds.items() if kind == "classification"), None)
    return [
        measure_output(
            name,
            kind,
            fp32[name],
            artifact[name],
            labels if name == labelled else None,
            source=source,
            allow_low_accuracy=allow_low_accuracy,
        )
        for name, (kind, source) in kinds.items()
    ]
