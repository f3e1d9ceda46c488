"""Measure the artifact against the fp32 source model: accuracy on the evaluation set, file sizes and
single-sample host latency (one thread each), feeding the artifact through the manifest's TensorSpecs
exactly as the agent will.
"""

from __future__ import annotations

import time

import numpy as np

from edgefleet.contract.manifest import AccuracyMetrics, ConversionMetrics, TensorSpec
from edgefleet.contract.profiles import Precision
from edgefleet.contract.tensors import from_artifact, to_artifact
from edgefleet.converter.context import ConversionContext
from edgefleet.converter.steps.calibration import TensorSet
from edgefleet.converter.steps.runners import HostRunner, OnnxRunner, runner_for

MAX_BATCH = 256
WARMUP_RUNS = 10
TIMED_RUNS = 200
MAX_TIMING_SECONDS = 3.0
FUSED_KERNEL_TOLERANCE_POINTS = 0.5


def predict_float(runner: HostRunner, data: TensorSet, names: list[str], output: int) -> np.ndarray:
    """One output of the fp32 model over every sample."""
    chunks = [
        runner.run([batch[name] for name in names])[output]
        for batch in data.sample_batches(runner.max_batch or MAX_BATCH)
    ]
    return np.concatenate(chunks)


def predict_artifact(
    runner: HostRunner, data: TensorSet, inputs: list[TensorSpec], output_spec: TensorSpec, output: int
) -> np.ndarray:
    """One output of the artifact over every sample, in float form (to_artifact / from_artifact)."""
    chunks = []
    for batch in data.sample_batches(runner.max_batch or MAX_BATCH):
        feeds = [to_artifact(spec, batch[spec.name])[0] for spec in inputs]
        chunks.append(from_artifact(output_spec, runner.run(feeds)[output], as_float=True))
    return np.concatenate(chunks)


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


class Evaluate:
    """Fill ctx.metrics; warn (in the summary) when the accuracy drop exceeds the profile's budget."""

    name = "evaluate"

    def run(self, ctx: ConversionContext) -> None:
        info = ctx.need(ctx.model_info, "model description")
        path = ctx.need(ctx.artifact_path, "the artifact")
        names = [t.name for t in info.inputs]
        output_name = info.outputs[0].name
        art_output = [spec.name for spec in ctx.outputs].index(output_name)
        art_output_spec = ctx.outputs[art_output]

        fp32 = OnnxRunner(ctx.request.model)
        artifact = runner_for(path, ctx.inputs)  # latency: the runtime's own (fused int8) kernels
        # A QDQ model is scored by its exact int8 semantics, not by this host's int8 kernels (see OnnxRunner).
        is_qdq = path.suffix == ".onnx" and ctx.profile.artifact.precision is Precision.INT8
        scorer = OnnxRunner(path, exact_qdq=True) if is_qdq else artifact
        host_runtime = artifact.label + (
            "; accuracy with QDQ fusion off (exact int8 semantics)" if is_qdq else ""
        )
        accuracy = None
        if ctx.eval is not None:
            reference = predict_float(fp32, ctx.eval, names, 0)
            accuracy = accuracy_metrics(
                reference,
                predict_artifact(scorer, ctx.eval, ctx.inputs, art_output_spec, art_output),
                ctx.eval.labels,
            )
            if is_qdq:
                fused = accuracy_metrics(
                    reference,
                    predict_artifact(artifact, ctx.eval, ctx.inputs, art_output_spec, art_output),
                    ctx.eval.labels,
                )
                if abs(fused.artifact - accuracy.artifact) > FUSED_KERNEL_TOLERANCE_POINTS:
                    ctx.notes.append(
                        f"onnxruntime's fused int8 CPU kernels on this host score {fused.artifact:.2f}% "
                        f"(exact int8: {accuracy.artifact:.2f}%); x86 CPUs without VNNI saturate u8 x s8 "
                        "products, TensorRT and ARM CPUs compute the exact result"
                    )
            budget = ctx.profile.max_accuracy_drop_points
            if accuracy.drop_points > budget:
                ctx.notes.append(
                    f"WARNING: accuracy drops {accuracy.drop_points:.2f} points, more than profile "
                    f"'{ctx.profile.name}' allows ({budget:.2f}); check the calibration data before deploying"
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
