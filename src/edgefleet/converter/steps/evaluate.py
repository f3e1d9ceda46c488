"""Measure the artifact against the fp32 source model: the fidelity of every output on the evaluation set
(each by the measure of its kind, converter/fidelity/), file sizes and single-sample host latency (one
thread each), feeding the artifact through the manifest's TensorSpecs exactly as the agent will.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgefleet.contract.manifest import AccuracyMetrics, ConversionMetrics, TensorSpec
from edgefleet.contract.profiles import Precision
from edgefleet.contract.tensors import from_artifact, to_artifact
from edgefleet.converter.context import ConversionContext
from edgefleet.converter.fidelity.assess import FidelityPlan, assess, plan_fidelity
from edgefleet.converter.fidelity.assess import fidelity_notes as _notes
from edgefleet.converter.fidelity.custom import EvalData, MetricHook, check_hook_spec, load_metric_hook
from edgefleet.converter.fidelity.judge import FidelityBudget, Judgement, fidelity_budget
from edgefleet.converter.fidelity.kinds import check_output_names
from edgefleet.converter.fidelity.outputs import OutputMetrics
from edgefleet.converter.steps.calibration import TensorSet
from edgefleet.converter.steps.runners import HostRunner, OnnxRunner, runner_for

__all__ = ["OutputMetrics", "accuracy_scorer", "fidelity_notes", "fidelity_plan", "fp32_outputs", "score"]

MAX_BATCH = 256
WARMUP_RUNS = 10
TIMED_RUNS = 200
MAX_TIMING_SECONDS = 3.0
FUSED_KERNEL_TOLERANCE_POINTS = 0.5


def predict_float_outputs(runner: HostRunner, data: TensorSet, names: list[str]) -> list[np.ndarray]:
    """Every output of the fp32 model over every sample, in the model's output order."""
    chunks = [
        runner.run([batch[name] for name in names])
        for batch in data.sample_batches(runner.max_batch or data.max_batch or MAX_BATCH)
    ]
    return [np.concatenate([chunk[i] for chunk in chunks]) for i in range(len(chunks[0]))]


def predict_artifact_outputs(
    runner: HostRunner, data: TensorSet, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> dict[str, np.ndarray]:
    """Every output of the artifact (by name) over every sample, in float form."""
    chunks: dict[str, list[np.ndarray]] = {spec.name: [] for spec in outputs}
    for batch in data.sample_batches(runner.max_batch or data.max_batch or MAX_BATCH):
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


def budget_for(ctx: ConversionContext) -> FidelityBudget:
    """The request's bounds, else the profile's points budget and the artifact precision's dB floor (the
    floor follows the precision actually built, which --precision and alternatives change)."""
    request = ctx.request
    return fidelity_budget(
        request.max_drop,
        ctx.profile.max_accuracy_drop_points,
        request.min_sqnr,
        ctx.profile.artifact.precision,
    )


def _hook(ctx: ConversionContext) -> tuple[str, MetricHook] | None:
    spec = ctx.request.metric
    return None if spec is None else (spec, load_metric_hook(spec))


def fidelity_plan(ctx: ConversionContext, reference: dict[str, np.ndarray]) -> FidelityPlan:
    plan = plan_fidelity(ctx.request.output_kinds, reference, budget_for(ctx), _hook(ctx))
    return replace(plan, allow_low_accuracy=ctx.request.allow_low_accuracy)


def fidelity_notes(plan: FidelityPlan, judgement: Judgement, data: TensorSet) -> list[str]:
    return _notes(plan, judgement, data.labels, data.samples)


def eval_data(data: TensorSet) -> EvalData:
    return EvalData(inputs=data.inputs, labels=data.labels, path=data.path)


def score(
    ctx: ConversionContext,
    runner: HostRunner,
    data: TensorSet,
    reference: dict[str, np.ndarray],
    plan: FidelityPlan,
) -> Judgement:
    """Every output of the artifact run by `runner` measured against `reference` (fp32) and judged."""
    artifact = predict_artifact_outputs(runner, data, ctx.inputs, ctx.outputs)
    return assess(plan, reference, artifact, eval_data(data))


def headline(judgement: Judgement) -> OutputMetrics:
    """The output the manifest's accuracy describes: the first classification output (what it always
    meant), else the one furthest from its bound."""
    outputs = judgement.outputs
    first = next((o for o in outputs if o.kind == "classification"), None)
    if first is not None:
        return first
    return next((o for o in outputs if o.output == judgement.worst), outputs[0])


def headline_accuracy(judgement: Judgement, samples: int) -> AccuracyMetrics:
    """The manifest's accuracy. `metric` stays one of the two values older readers accept ('top1' against
    labels, 'top1_agreement' against fp32's own outputs); `measure` and `unit` say what it really is."""
    output = headline(judgement)
    return AccuracyMetrics(
        metric="top1" if output.metric == "top1" else "top1_agreement",
        samples=samples,
        fp32=output.fp32,
        artifact=output.artifact,
        drop_points=output.drop_points if output.drop_points is not None else 0.0,
        measure=output.metric,
        unit=output.unit,
        output=output.output,
        sqnr_db=output.sqnr_db,
        judged_by=judgement.judged_by,
        within_budget=judgement.met,
    )


class CheckFidelityOptions:
    """Before any long step: every output named by --output-kind exists, and the --metric hook imports."""

    name = "check fidelity options"

    def run(self, ctx: ConversionContext) -> None:
        info = ctx.need(ctx.model_info, "model description")
        check_output_names(ctx.request.output_kinds, [t.name for t in info.outputs])
        if ctx.request.metric is not None:
            check_hook_spec(ctx.request.metric)
            load_metric_hook(ctx.request.metric)
            if ctx.eval is None:
                ctx.notes.append(f"--metric {ctx.request.metric} not used: no evaluation data (pass --eval)")


class Evaluate:
    """Fill ctx.metrics (the headline accuracy, sizes, latency) and ctx.output_metrics (every output)."""

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
            plan = fidelity_plan(ctx, reference)
            judgement = score(ctx, accuracy_scorer(ctx, path), ctx.eval, reference, plan)
            ctx.output_metrics = judgement.outputs
            accuracy = headline_accuracy(judgement, ctx.eval.samples)
            if qdq:
                exact = headline(judgement)
                fused = headline(score(ctx, artifact, ctx.eval, reference, plan))
                tolerance = FUSED_KERNEL_TOLERANCE_POINTS if exact.unit == "%" else 1.0
                if abs(fused.artifact - exact.artifact) > tolerance:
                    ctx.notes.append(
                        f"onnxruntime's fused int8 CPU kernels on this host score {fused.artifact:.2f}"
                        f"{exact.unit} (exact int8: {exact.artifact:.2f}{exact.unit}); x86 CPUs without VNNI "
                        "saturate u8 x s8 products, TensorRT and ARM CPUs compute the exact result"
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
