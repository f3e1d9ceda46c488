"""Calibration and evaluation data: .npz files keyed by model input name, checked against the model
before any heavy work, and fed to quantizers as a CalibrationDataReader-style iterator.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgefleet.contract.profiles import Precision
from edgefleet.converter.context import ConversionContext
from edgefleet.converter.errors import InputDataError, MissingCalibrationError
from edgefleet.converter.steps.load_onnx import ModelInfo

MIN_CALIBRATION_SAMPLES = 10
LABELS_KEY = "y"


@dataclass(frozen=True)
class TensorSet:
    """Samples for every model input (first axis = sample), plus optional integer labels."""

    path: Path
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    # Largest batch the model the artifact is built from accepts (1 once its batch is fixed; None: any).
    max_batch: int | None = None

    @property
    def samples(self) -> int:
        return len(next(iter(self.inputs.values())))

    def sample_batches(self, batch: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.samples, batch):
            yield {name: array[start : start + batch] for name, array in self.inputs.items()}


def _fmt(shape: object) -> str:
    return "(" + ",".join("?" if d is None else str(d) for d in shape) + ")"  # type: ignore[attr-defined]


def load_tensor_set(path: Path, info: ModelInfo, role: str, min_samples: int) -> TensorSet:
    """Read `path` and check it fits the model's inputs; InputDataError says what does not fit."""
    where = f"{role} data {path}"
    if not path.is_file():
        raise InputDataError(f"{where}: no such file; pass an .npz with one array per model input")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputDataError(f"{where}: not a readable .npz file ({exc})") from exc
    expected = [tensor.name for tensor in info.inputs]
    allowed_extra = {LABELS_KEY}  # optional in every set (scoring, recovery training after pruning)
    missing = [name for name in expected if name not in arrays]
    unexpected = sorted(set(arrays) - set(expected) - allowed_extra)
    if missing or unexpected:
        raise InputDataError(
            f"{where}: arrays {sorted(arrays)} do not match the model inputs {expected} "
            f"(missing {missing}, unexpected {unexpected}); save one array per input name"
        )
    inputs: dict[str, np.ndarray] = {}
    counts = set()
    for tensor in info.inputs:
        array = arrays[tensor.name]
        declared = tensor.shape
        per_sample_ok = len(array.shape) == len(declared) and all(
            want is None or want == got for got, want in zip(array.shape[1:], declared[1:], strict=True)
        )
        batch_ok = per_sample_ok and (
            declared[0] is None or declared[0] == 1 or array.shape[0] == declared[0]
        )
        if not batch_ok:
            raise InputDataError(
                f"{where}: array '{tensor.name}' has shape {_fmt(array.shape)} but the model input is "
                f"{_fmt(declared)} (first axis = samples); reshape the data to the model's layout"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise InputDataError(f"{where}: array '{tensor.name}' is {array.dtype}; save float32 samples")
        if not np.isfinite(array).all():
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise InputDataError(
                f"{where}: array '{tensor.name}' contains {bad} NaN/inf values; clean the data"
            )
        inputs[tensor.name] = np.ascontiguousarray(array, dtype=np.float32)
        counts.add(array.shape[0])
    if len(counts) != 1:
        raise InputDataError(f"{where}: inputs have different sample counts {sorted(counts)}")
    samples = counts.pop()
    if samples < min_samples:
        raise InputDataError(
            f"{where}: {samples} samples, at least {min_samples} are needed; add representative samples"
        )
    labels = arrays.get(LABELS_KEY)
    if labels is not None and (
        labels.ndim != 1 or len(labels) != samples or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise InputDataError(
            f"{where}: labels '{LABELS_KEY}' must be {samples} integers (one class index per sample), "
            f"got {labels.dtype} {_fmt(labels.shape)}"
        )
    return TensorSet(path=path, inputs=inputs, labels=labels)


def fixed_batch(model) -> int | None:
    """1 when every input of `model` has a fixed batch of 1 (the profile or --input-shape fixed it)."""
    initializers = {init.name for init in model.graph.initializer}
    firsts = [
        value.type.tensor_type.shape.dim[0].dim_value if value.type.tensor_type.shape.dim else 0
        for value in model.graph.input
        if value.name not in initializers
    ]
    return 1 if firsts and all(first == 1 for first in firsts) else None


def why_calibration_needed(ctx: ConversionContext) -> str | None:
    """Why this conversion needs a calibration file, or None (an fp16/fp32 artifact without compression)."""
    if ctx.profile.artifact.precision is Precision.INT8:
        return (
            f"profile '{ctx.profile.name}' makes an int8 artifact, whose activation ranges come from "
            "calibration inputs"
        )
    request = ctx.request
    if request.prune or request.low_rank or request.magnitude_prune:
        return "compression checks (and recovery training) run on the calibration inputs"
    return None


class LoadCalibration:
    """Load and check the calibration set (static quantization needs representative inputs). Without one,
    an fp16/fp32 conversion takes the evaluation inputs for its range checks and health samples."""

    name = "load calibration data"

    def run(self, ctx: ConversionContext) -> None:
        info = ctx.need(ctx.model_info, "the model description")
        path, role, minimum = ctx.request.calib, "calibration", MIN_CALIBRATION_SAMPLES
        if path is None:
            precision = ctx.profile.artifact.precision.value
            reason = why_calibration_needed(ctx)
            if reason is not None:
                raise MissingCalibrationError(
                    f"{reason}: pass --calib CALIB.npz (at least {minimum} representative samples)"
                )
            if ctx.request.eval is None:
                raise InputDataError(
                    f"profile '{ctx.profile.name}' makes an {precision} artifact, which needs no "
                    "calibration, but the converter checks it against fp32 on your inputs: pass --eval "
                    "EVAL.npz (or --calib)"
                )
            path, role, minimum = ctx.request.eval, "evaluation", 1
            ctx.notes.append(
                f"no --calib: an {precision} artifact needs no calibration; its range checks and the "
                "bundle's health samples use the --eval inputs"
            )
        data = load_tensor_set(path, info, role, minimum)
        ctx.calib = replace(data, max_batch=fixed_batch(ctx.need(ctx.model, "the source model")))


class LoadEvaluation:
    """Load and check the evaluation set, when one was given (labels `y` are optional)."""

    name = "load evaluation data"

    def run(self, ctx: ConversionContext) -> None:
        if ctx.request.eval is not None:
            info = ctx.need(ctx.model_info, "the model description")
            data = load_tensor_set(ctx.request.eval, info, "evaluation", 1)
            # the fixed model's batch (e.g. --input-shape on a model whose batch is not axis 0 of
            # every input): the source file on disk may still take any batch
            ctx.eval = replace(data, max_batch=fixed_batch(ctx.need(ctx.model, "the source model")))


class OnnxCalibrationReader:
    """onnxruntime.quantization.CalibrationDataReader over a TensorSet (defined structurally so that
    onnxruntime is imported only by the step that quantizes)."""

    def __init__(self, data: TensorSet, batch: int) -> None:
        self._data = data
        self._batch = min(batch, data.max_batch) if data.max_batch else batch
        self._iter = data.sample_batches(self._batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = self._data.sample_batches(self._batch)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch
