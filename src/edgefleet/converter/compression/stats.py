"""What a compression method changed, measured on the fp32 ONNX graphs before and after: weights (all and
non-zero), multiply-accumulates per sample, file size raw and deflated, host latency and accuracy.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgefleet.converter.steps.calibration import TensorSet

TIMING_SECONDS = 0.5
TIMING_WARMUP = 5
EVAL_BATCH = 256

Method = Literal["channel_pruning", "sparsity_2_4", "low_rank", "magnitude_pruning", "qat"]
AccuracyMetric = Literal["top1", "top1_agreement"]


class ModelStats(BaseModel):
    """One fp32 ONNX model, as a compression method sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: int  # float weight elements (initializers and float Constant nodes)
    nonzero_params: int
    macs: int | None  # multiply-accumulates for one sample of Conv/ConvTranspose/Gemm/MatMul; None: unknown
    size_bytes: int
    zipped_size_bytes: int  # the file deflated (zlib level 6, as zip does)
    host_latency_ms: float  # onnxruntime CPU, 1 thread, batch 1, median
    accuracy: float | None  # percent: top-1 with labels, else top-1 agreement with the uncompressed model


class CompressionReport(BaseModel):
    """Before/after of one compression method; `notes` say what it did and did not buy."""

    model_config = ConfigDict(extra="forbid")

    method: Method
    setting: str
    accuracy_metric: AccuracyMetric  # scored on the evaluation set, else on the calibration set
    eval_samples: int
    before: ModelStats
    after: ModelStats
    layers: list[str] = []  # per-layer decisions, e.g. chosen rank or why a layer was skipped
    notes: list[str] = []

    @property
    def accuracy_drop_points(self) -> float | None:
        if self.before.accuracy is None or self.after.accuracy is None:
            return None
        return round(self.before.accuracy - self.after.accuracy, 2)


def _float_initializers(model: Any) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    arrays = [numpy_helper.to_array(init) for init in model.graph.initializer]
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    arrays.append(numpy_helper.to_array(onnx.helper.get_attribute_value(attr)))
    return [a for a in arrays if np.issubdtype(a.dtype, np.floating)]


def count_params(model: Any) -> tuple[int, int]:
    """(all, non-zero) float weight elements of an ONNX model."""
    arrays = _float_initializers(model)
    return sum(int(a.size) for a in arrays), sum(int(np.count_nonzero(a)) for a in arrays)


def _with_unit_batch(model: Any) -> Any:
    """A copy whose dynamic leading input dims are 1, so shape inference yields per-sample shapes."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {init.name for init in copy.graph.initializer}
    for value in copy.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    # Outputs keep their declared (possibly dynamic) batch; inference would conflict with a fixed 1.
    for value in copy.graph.output:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            dims[0].Clear()
    return onnx.shape_inference.infer_shapes(copy)


def _static_shape(value: Any) -> list[int] | None:
    dims = value.type.tensor_type.shape.dim
    if not value.type.tensor_type.HasField("shape"):
        return None
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims]
    return None if -1 in shape else shape


def count_macs(model: Any) -> int | None:
    """Dense multiply-accumulates per sample; None when a shape needed for it is not static."""
    try:
        inferred = _with_unit_batch(model)
    except Exception:  # shape inference gives up on some graphs (custom ops): the count is then unknown
        return None
    graph = inferred.graph
    shapes: dict[str, list[int] | None] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        shapes[value.name] = _static_shape(value)
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        out = shapes.get(node.output[0])
        if a is None or b is None or out is None:
            return None
        if node.op_type == "Conv":
            # every output element: (C_in / group) * kernel elements
            total += int(np.prod(out)) * int(np.prod(b[1:]))
        elif node.op_type == "ConvTranspose":
            # every input element scatters into C_out / group * kernel elements
            total += int(np.prod(a)) * int(np.prod(b[1:]))
        elif node.op_type == "Gemm":
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            k = a[0] if trans_a else a[-1]
            total += int(np.prod(out)) * int(k)
        else:  # MatMul: every output element is a dot product over A's last axis
            total += int(np.prod(out)) * int(a[-1])
    return total


def zipped_size(path: Path) -> int:
    return len(zlib.compress(path.read_bytes(), 6))


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency_ms(session: Any, sample: dict[str, np.ndarray]) -> float:
    """Median single-sample latency over TIMING_SECONDS (after a few warm-up runs)."""
    for _ in range(TIMING_WARMUP):
        session.run(None, sample)
    timings: list[float] = []
    deadline = time.perf_counter() + TIMING_SECONDS
    while time.perf_counter() < deadline or len(timings) < 10:
        start = time.perf_counter()
        session.run(None, sample)
        timings.append(time.perf_counter() - start)
    return round(float(np.median(timings)) * 1000, 4)


def predict_top1(session: Any, data: TensorSet) -> np.ndarray:
    """Top-1 class of the first output for every sample."""
    static_batch = session.get_inputs()[0].shape[0]
    batch = static_batch if isinstance(static_batch, int) and static_batch > 0 else EVAL_BATCH
    chunks = []
    for feeds in data.sample_batches(batch):
        logits = session.run(None, feeds)[0]
        chunks.append(logits.reshape(len(logits), -1).argmax(axis=1))
    return np.concatenate(chunks)


def measure(
    path: Path, data: TensorSet, reference_top1: np.ndarray | None = None
) -> tuple[ModelStats, np.ndarray]:
    """Stats of the ONNX model at `path`, and its top-1 predictions on `data`.

    Accuracy is top-1 against data.labels when present, else agreement with `reference_top1` (100 for the
    reference model itself, which passes None)."""
    import onnx

    model = onnx.load(str(path))
    params, nonzero = count_params(model)
    session = _session(path)
    top1 = predict_top1(session, data)
    if data.labels is not None:
        accuracy: float | None = round(float((top1 == data.labels).mean() * 100), 2)
    elif reference_top1 is not None:
        accuracy = round(float((top1 == reference_top1).mean() * 100), 2)
    else:
        accuracy = 100.0
    sample = {name: array[:1] for name, array in data.inputs.items()}
    stats = ModelStats(
        params=params,
        nonzero_params=nonzero,
        macs=count_macs(model),
        size_bytes=path.stat().st_size,
        zipped_size_bytes=zipped_size(path),
        host_latency_ms=latency_ms(session, sample),
        accuracy=accuracy,
    )
    return stats, top1


def compare(
    method: Method,
    setting: str,
    before: Path,
    after: Path,
    data: TensorSet,
    layers: list[str] | None = None,
    notes: list[str] | None = None,
) -> CompressionReport:
    """Measure both models on the same data, one after the other, in one process."""
    stats_before, top1_before = measure(before, data)
    stats_after, _ = measure(after, data, reference_top1=top1_before)
    return CompressionReport(
        method=method,
        setting=setting,
        accuracy_metric="top1" if data.labels is not None else "top1_agreement",
        eval_samples=data.samples,
        before=stats_before,
        after=stats_after,
        layers=layers or [],
        notes=notes or [],
    )


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    if n >= 10**6:
        return f"{n / 10**6:.2f}M"
    return f"{n / 10**3:.1f}k" if n >= 10**3 else str(n)


def _ratio(before: int | float | None, after: int | float | None) -> str:
    return f"{after / before:.2f}x" if before and after is not None else "?"


def summary_lines(report: CompressionReport) -> list[str]:
    """Human-readable before -> after lines for the CLI summary."""
    b, a = report.before, report.after
    lines = [
        f"{report.method.replace('_', ' ')} ({report.setting})",
        f"  params {_count(b.params)} -> {_count(a.params)} ({_ratio(b.params, a.params)}), non-zero "
        f"{_count(b.nonzero_params)} -> {_count(a.nonzero_params)}; MACs {_count(b.macs)} -> "
        f"{_count(a.macs)} ({_ratio(b.macs, a.macs)})",
        f"  file {b.size_bytes / 1024:.1f} -> {a.size_bytes / 1024:.1f} KiB, zipped "
        f"{b.zipped_size_bytes / 1024:.1f} -> {a.zipped_size_bytes / 1024:.1f} KiB; host latency "
        f"{b.host_latency_ms:.3f} -> {a.host_latency_ms:.3f} ms",
    ]
    if report.accuracy_metric == "top1":
        lines.append(
            f"  top-1 on {report.eval_samples} samples: {b.accuracy:.2f}% -> {a.accuracy:.2f}% "
            f"(drop {report.accuracy_drop_points:+.2f} points)"
        )
    else:
        lines.append(
            f"  top-1 agreement with the uncompressed model on {report.eval_samples} samples: "
            f"{a.accuracy:.2f}%"
        )
    lines.extend(f"  {note}" for note in report.notes)
    return lines
