"""Measure the artifact against the fp32 source model: accuracy and SQNR of every output on the evaluation
set, file sizes and single-sample host latency (one thread each), feeding the artifact through the
manifest's TensorSpecs exactly as the agent will.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgefleet.contract.manifest import AccuracyMetrics, ConversionMetrics, TensorSpec
from edgefleet.contract.profiles import Precision
from edgefleet.contract.tensors import from_artifact, to_artifact
from edgefleet.converter.context import ConversionContext
from edgefleet.converter.steps.calibration import TensorSet
from edgefleet.converter.steps.layer_error import sqnr_db
from edgefleet.converter.steps.runners import HostRunner, OnnxRunner, runner_for

MAX_BATCH = 256
WARMUP_RUNS = 10
TIMED_RUNS = 200
MAX_TIMING_SECONDS = 3.0
FUSED_KERNEL_TOLERANCE_POINTS = 0.5


class OutputMetrics(BaseModel):
    """One model output, artifact vs fp32 on the evaluation set. Labels `y` score the first output (top-1);
    every output gets its top-1 agreement with fp32 and its SQNR."""

    model_config = ConfigDict(extra="forbid")

    output: str
    metric: Literal["top1", "top1_agreement"]
    fp32: float | None  # top-1 % of the fp32 model (with labels), else null
    artifact: float  # top-1 % (with labels) or top-1 agreement with fp32 %
    drop_points: float
    agreement: float  # top-1 agreement with fp32, %
    sqnr_db: float  # fp32 output power over (fp32 - artifact) power, dB


def predict_float_outputs(runner: HostRunner, data: TensorSet, names: list[str]) -> list[np.ndarray]:
    """Every output of the fp32 model over every sample, in the model's output order."""
    chunks = [
        runner.run([batch[name] for name in names])
        for batch in data.sample_batches(runner.max_batch or MAX_BATCH)
    ]
    return [np.concatenate([chunk[i] for chunk in chunks]) for i in range(len(chunks[0]))]


def predict_artifact_outputs(
    runner: HostRunner, data: TensorSet, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> dict[str, np.ndarray]:
    """Every output of the artifact (by name) over every sample, in float form."""
    chunks: dict[str, list[np.ndarray]] = {spec.name: [] for spec in outputs}
    for batch in data.sample_batches(runner.max_batch or MAX_BATCH):
        feeds = [to_artifact(spec, batch[spec.name])[0] for spec in inputs]
        results = runner.run(feeds)
        for position, spec in enumerate(outputs):
            chunks[spec.name].append(from_artifact(spec, results[position], as_float=True))
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def median_latency_ms(runner: HostRunner, feeds: list[np.ndarray]) -> float:
    for _ in range(WARMUP_RUNS):
        runner.run(feeds)
    timings = []
    deadline = time.perf_counter() + MAX_TIMING_SECONDS
    for _ in range(TIMED_RUNS):
        start = time.perf_counter()
        runner.run(feeds)
        timings.append(time.perf_counter() - start)
        if start > deadline:
            break
    return round(float(np.median(timings)) * 1000, 4)


def _top1(logits: np.ndarray) -> np.ndarray:
    return logits.reshape(len(logits), -1).argmax(axis=1)


def accuracy_metrics(fp32: np.ndarray, artifact: np.ndarray, labels: np.ndarray | None) -> AccuracyMetrics:
    pred_fp32, pred_artifact = _top1(fp32), _top1(artifact)
    if labels is not None:
        acc_fp32 = round(float((pred_fp32 == labels).mean() * 100), 2)
        acc_artifact = round(float((pred_artifact == labels).mean() * 100), 2)
        return AccuracyMetrics(
            metric="top1",
            samples=len(labels),
            fp32=acc_fp32,
            artifact=acc_artifact,
            drop_points=round(acc_fp32 - acc_artifact, 2),
        )
    agreement = round(float((pred_fp32 == pred_artifact).mean() * 100), 2)
    return AccuracyMetrics(
        metric="top1_agreement",
        samples=len(pred_fp32),
        fp32=None,
        artifact=agreement,
        drop_points=round(100 - agreement, 2),
    )


def output_metrics(
    name: str, fp32: np.ndarray, artifact: np.ndarray, labels: np.ndarray | None
) -> OutputMetrics:
    accuracy = accuracy_metrics(fp32, artifact, labels)
    agreement = float((_top1(fp32) == _top1(artifact)).mean() * 100)
    return OutputMetrics(
        output=name,
        metric=accuracy.metric,
        fp32=accuracy.fp32,
        artifact=accuracy.artifact,
        drop_points=accuracy.drop_points,
        agreement=round(agreement, 2),
        sqnr_db=round(sqnr_db(fp32, artifact), 2),
    )


def is_qdq(ctx: ConversionContext, path: Path) -> bool:
    return path.suffix == ".onnx" and ctx.profile.artifact.precision is Precision.INT8


def accuracy_scorer(ctx: ConversionContext, path: Path) -> HostRunner:
    """What scores accuracy: a QDQ model by its exact int8 semantics, not by this host's int8 kernels (see
    OnnxRunner); anything else by the runtime the device uses."""
    return OnnxRunner(path, exact_qdq=True) if is_qdq(ctx, path) else runner_for(path, ctx.inputs)


def fp32_outputs(ctx: ConversionContext, data: TensorSet) -> dict[str, np.ndarray]:
    info = ctx.need(ctx.model_info, "model description")
    predictions = predict_float_outputs(OnnxRunner(ctx.request.model), data, [t.name for t in info.inputs])
    return {t.name: p for t, p in zip(info.outputs, predictions, strict=True)}


def score_outputs(
    ctx: ConversionContext, runner: HostRunner, data: TensorSet, reference: dict[str, np.ndarray]
) -> list[OutputMetrics]:
    """Per-output metrics of the artifact run by `runner`, in the source model's output order; labels
    score the first output."""
    artifact = predict_artifact_outputs(runner, data, ctx.inputs, ctx.outputs)
    return [
        output_metrics(name, fp32, artifact[name], data.labels if position == 0 else None)
        for position, (name, fp32) in enumerate(reference.items())
    ]


def headline_accuracy(first: OutputMetrics, samples: int) -> AccuracyMetrics:
    """The manifest's accuracy: the first output's."""
    return AccuracyMetrics(
        metric=first.metric,
        samples=samples,
        fp32=first.fp32,
        artifact=first.artifact,
        drop_points=first.drop_points,
    )


class Evaluate:
    """Fill ctx.metrics (accuracy of the first output, sizes, latency) and ctx.output_metrics."""

    name = "evaluate"

    def run(self, ctx: ConversionContext) -> None:
        info = ctx.need(ctx.model_info, "model description")
        path = ctx.need(ctx.artifact_path, "the artifact")
        names = [t.name for t in info.inputs]
        fp32 = OnnxRunner(ctx.request.model)
        artifact = runner_for(path, ctx.inputs)  # latency: the runtime's own (fused int8) kernels
        qdq = is_qdq(ctx, path)
        host_runtime = artifact.label + (
            "; accuracy with QDQ fusion off (exact int8 semantics)" if qdq else ""
        )
        accuracy = None
        if ctx.eval is not None:
            reference = fp32_outputs(ctx, ctx.eval)
            ctx.output_metrics = score_outputs(ctx, accuracy_scorer(ctx, path), ctx.eval, reference)
            accuracy = headline_accuracy(ctx.output_metrics[0], ctx.eval.samples)
            if qdq:
                fused = score_outputs(ctx, artifact, ctx.eval, reference)[0]
                if abs(fused.artifact - accuracy.artifact) > FUSED_KERNEL_TOLERANCE_POINTS:
                    ctx.notes.append(
                        f"onnxruntime's fused int8 CPU kernels on this host score {fused.artifact:.2f}% "
                        f"(exact int8: {accuracy.artifact:.2f}%); x86 CPUs without VNNI saturate u8 x s8 "
                        "products, TensorRT and ARM CPUs compute the exact result"
                    )
        sample_set = ctx.eval if ctx.eval is not None else ctx.need(ctx.calib, "calibration data")
        sample = {name: sample_set.inputs[name][:1] for name in names}
        ctx.metrics = ConversionMetrics(
            accuracy=accuracy,
            size_bytes_fp32=ctx.request.model.stat().st_size,
            size_bytes_artifact=path.stat().st_size,
            host_latency_ms_fp32=median_latency_ms(fp32, [sample[name] for name in names]),
            host_latency_ms_artifact=median_latency_ms(
                artifact, [to_artifact(spec, sample[spec.name])[0] for spec in ctx.inputs]
            ),
            host_runtime=host_runtime,
        )
