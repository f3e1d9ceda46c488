"""The conversion report: what the artifact costs and loses against the fp32 model, in one document.

report.json (also stored in the bundle manifest's `report`) is the machine-readable form; report.html
(report_html.py) draws the same data. Both are written next to the bundle (or into --report-dir), and also
when the accuracy budget is missed - then no bundle is written and the conversion fails.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

from edgefleet import __version__
from edgefleet.contract.manifest import AccuracyMetrics, ConversionMetrics
from edgefleet.contract.target_checks import TargetChecks
from edgefleet.converter.compression.stats import CompressionReport
from edgefleet.converter.context import ConversionContext
from edgefleet.converter.errors import ConversionError
from edgefleet.converter.fidelity.outputs import MEASURE_LABELS, OutputMetrics
from edgefleet.converter.steps.calibration_ranges import DEFAULT_CALIBRATION_METHOD, calibration_method
from edgefleet.converter.steps.layer_error import LayerError
from edgefleet.converter.steps.mixed_precision import BudgetOutcome
from edgefleet.converter.steps.package import bundle_file_name

REPORT_SCHEMA_VERSION: Final = 1


class AccuracyBudgetError(ConversionError):
    """The artifact loses more accuracy than allowed; the report (with the culprit layers) is written."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArtifactSummary(_Model):
    """One model file measured on the host: the fp32 source, the profile's artifact, or an alternative."""

    kind: str  # "fp32" for the source model, else "<format>-<precision>" or the alternative's kind
    path: str | None  # member of the bundle (null for the source model)
    role: Literal["source", "preferred", "alternative"]
    size_bytes: int
    host_latency_ms: float | None
    host_runtime: str | None
    accuracy: float | None  # the headline measure's value (top-1 %, agreement %, F1 %, ... or SQNR dB)
    accuracy_metric: str | None  # the headline measure: top1, top1_agreement, detection_f1, ..., sqnr
    drop_points: float | None  # points lost vs fp32 (percentage measures; null for dB measures)
    accuracy_unit: Literal["%", "dB"] | None = None


class CalibrationSummary(_Model):
    method: str
    default_method: str
    samples: int


class ConversionReport(_Model):
    schema_version: Literal[1] = REPORT_SCHEMA_VERSION
    name: str
    version: str
    profile: str
    profile_description: str
    source_model: str
    converter_version: str
    created_at: datetime
    calibration: CalibrationSummary
    evaluation_samples: int | None
    budget: BudgetOutcome | None
    outputs: list[OutputMetrics]
    artifacts: list[ArtifactSummary]
    layers: list[LayerError]
    notes: list[str]
    step_seconds: dict[str, float]
    bundle: str | None  # the bundle's file name; null when none was written (budget missed)
    target_checks: TargetChecks | None = None  # Edge TPU / TensorRT / XNNPACK findings (as in the manifest)
    host_machine: str = ""  # the converting machine's CPU architecture (host latency is measured there)
    compression: list[CompressionReport] = []  # before/after of each compression method, in the order applied


def _summary(
    kind: str, path: str | None, role: Literal["preferred", "alternative"], metrics: ConversionMetrics
) -> ArtifactSummary:
    accuracy = metrics.accuracy
    in_db = accuracy is not None and accuracy.unit == "dB"
    return ArtifactSummary(
        kind=kind,
        path=path,
        role=role,
        size_bytes=metrics.size_bytes_artifact,
        host_latency_ms=metrics.host_latency_ms_artifact,
        host_runtime=metrics.host_runtime,
        accuracy=accuracy.artifact if accuracy else None,
        accuracy_metric=(accuracy.measure or accuracy.metric) if accuracy else None,
        drop_points=accuracy.drop_points if accuracy and not in_db else None,
        accuracy_unit=accuracy.unit if accuracy else None,
    )


def artifact_summaries(ctx: ConversionContext) -> list[ArtifactSummary]:
    """fp32 source first, then the profile's artifact, then every alternative the bundle carries."""
    metrics: ConversionMetrics = ctx.need(ctx.metrics, "the metrics")
    accuracy = metrics.accuracy
    spec = ctx.profile.artifact
    path = ctx.need(ctx.artifact_path, "the artifact")
    in_percent = accuracy is not None and accuracy.unit == "%"
    rows = [
        ArtifactSummary(
            kind="fp32",
            path=None,
            role="source",
            size_bytes=metrics.size_bytes_fp32,
            host_latency_ms=metrics.host_latency_ms_fp32,
            host_runtime="onnxruntime CPUExecutionProvider, 1 thread",
            # fp32 against itself: its own score with labels, else full agreement; no SQNR against itself
            accuracy=accuracy.fp32
            if accuracy and accuracy.fp32 is not None
            else (100.0 if in_percent else None),
            accuracy_metric=(accuracy.measure or accuracy.metric) if accuracy else None,
            drop_points=0.0 if in_percent else None,
            accuracy_unit=accuracy.unit if accuracy else None,
        ),
        _summary(f"{spec.format.value}-{spec.precision.value}", f"model{path.suffix}", "preferred", metrics),
    ]
    for alternative in ctx.alternatives:
        if alternative.metrics is not None:
            rows.append(_summary(alternative.kind, alternative.path, "alternative", alternative.metrics))
    return rows


def build_report(ctx: ConversionContext, bundle: str | None) -> ConversionReport:
    request = ctx.request
    calib = ctx.need(ctx.calib, "calibration data")
    return ConversionReport(
        name=request.name,
        version=request.version,
        profile=ctx.profile.name,
        profile_description=ctx.profile.description,
        source_model=ctx.source_model,
        converter_version=__version__,
        created_at=datetime.now(timezone.utc),
        calibration=CalibrationSummary(
            method=calibration_method(ctx), default_method=DEFAULT_CALIBRATION_METHOD, samples=calib.samples
        ),
        evaluation_samples=ctx.eval.samples if ctx.eval is not None else None,
        budget=ctx.budget,
        outputs=ctx.output_metrics,
        artifacts=artifact_summaries(ctx),
        layers=ctx.layer_errors,
        notes=list(ctx.notes),
        step_seconds={name: round(seconds, 3) for name, seconds in ctx.step_seconds.items()},
        bundle=bundle,
        target_checks=ctx.target_checks,
        host_machine=platform.machine(),
        compression=list(ctx.compression),
    )


def report_paths(ctx: ConversionContext) -> tuple[Path, Path]:
    """report.json/report.html in --report-dir, else `<bundle name>.report.json/.html` next to the bundle."""
    request = ctx.request
    if request.report_dir is not None:
        return request.report_dir / "report.json", request.report_dir / "report.html"
    stem = bundle_file_name(request.name, request.version, ctx.profile.name).removesuffix(".efb")
    return request.out / f"{stem}.report.json", request.out / f"{stem}.report.html"


def write_report(ctx: ConversionContext, report: ConversionReport) -> list[Path]:
    from edgefleet.converter.report_html import render_html

    json_path, html_path = report_paths(ctx)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    html_path.write_text(render_html(report))
    ctx.report_files = [json_path, html_path]
    return ctx.report_files


class BuildReport:
    """Assemble the report before packaging, so the manifest carries it."""

    name = "build report"

    def run(self, ctx: ConversionContext) -> None:
        budget = ctx.budget
        # The budget binds the preferred artifact; say when an alternative misses it.
        for alternative in ctx.alternatives:
            accuracy = alternative.metrics.accuracy if alternative.metrics else None
            if budget is None or not budget.checked or accuracy is None:
                continue
            missed = (
                accuracy.within_budget is False
                if accuracy.within_budget is not None
                else accuracy.drop_points > budget.max_drop_points
            )
            if missed:
                ctx.notes.append(
                    f"alternative {alternative.kind} misses the budget that the preferred artifact meets "
                    f"({_accuracy_text(accuracy)}; judged by {accuracy.judged_by or accuracy.metric})"
                )
        met = ctx.budget is None or ctx.budget.met
        bundle = bundle_file_name(ctx.request.name, ctx.request.version, ctx.profile.name) if met else None
        ctx.report = build_report(ctx, bundle)


class CheckBudget:
    """Stop before packaging when the accuracy budget is missed: write the report, then fail."""

    name = "check accuracy budget"

    def run(self, ctx: ConversionContext) -> None:
        budget = ctx.budget
        if budget is None or budget.met:
            return
        files = write_report(ctx, ctx.need(ctx.report, "the report"))
        hints = "" if budget.float_fallback_allowed else "This target runs every layer in int8. "
        hints += "".join(f"Note: {note}. " for note in budget.fidelity_notes if "evaluation sample" in note)
        accept = "a larger --max-drop"
        if budget.sqnr_db is not None:
            accept += " (points) or a lower --min-sqnr (dB)"
        if budget.custom_metric is not None:
            accept = f"a better score from --metric {budget.custom_metric.function}, or a larger --max-drop"
        raise AccuracyBudgetError(
            f"profile '{ctx.profile.name}': {budget.message}. No bundle written; report: {files[1]}. "
            f"{hints}Try more representative calibration data (--calib), another --calib-method "
            f"(minmax, entropy, percentile), or accept the loss with {accept}"
        )


class WriteReport:
    """Write report.json and report.html for the finished conversion."""

    name = "write report"

    def run(self, ctx: ConversionContext) -> None:
        write_report(ctx, ctx.need(ctx.report, "the report"))


def _accuracy_text(accuracy: AccuracyMetrics) -> str:
    if accuracy.unit == "dB":
        return f"SQNR {accuracy.artifact:.1f} dB"
    measure = accuracy.measure or accuracy.metric
    return f"{measure} {accuracy.artifact:.2f}%, drop {accuracy.drop_points:.2f} points"


def output_line(output: OutputMetrics) -> str:
    """One output's measure in words: what it is, how it was judged, its SQNR and cosine."""
    kind = f"{output.kind}, {'named' if output.kind_source == 'request' else 'from its shape'}"
    cosine = f"cosine {output.cosine:.4f}" if output.cosine is not None else ""
    if output.unit == "dB":
        value = f"SQNR {output.sqnr_db:.1f} dB, {cosine}"
    else:
        value = f"{MEASURE_LABELS[output.metric]} {output.artifact:.2f}%"
        value += f" (fp32 {output.fp32:.2f}%)" if output.fp32 is not None else ""
        value += f"; SQNR {output.sqnr_db:.1f} dB, {cosine}"
    verdict = ""
    if output.within_budget is not None:
        verdict = f"; {'within' if output.within_budget else 'OVER'} {output.budget}"
    return f"'{output.output}' ({kind}): {value.rstrip(', ')}{verdict}"


def report_lines(report: ConversionReport | None, files: list[Path]) -> list[str]:
    """The convert summary's per-output, budget and report lines; the budget line names the measure(s)
    that judged it."""
    lines = []
    if report is not None:
        outputs = report.outputs
        if len(outputs) > 1 or any(o.kind != "classification" for o in outputs):
            lines += [f"output    {output_line(o)}" for o in outputs]
    if report is not None and report.budget is not None:
        budget = report.budget
        if budget.checked:
            kept = f"; {len(budget.float_layers)} layer(s) kept in float" if budget.float_layers else ""
            bounds = []  # only the bounds some output was held to
            if budget.drop_points is not None or budget.custom_metric is not None:
                bounds.append(f"drop <= {budget.max_drop_points:.2f} points ({budget.source})")
            if budget.sqnr_db is not None and budget.min_sqnr_db is not None:
                bounds.append(f"SQNR >= {budget.min_sqnr_db:.1f} dB ({budget.sqnr_source})")
            verdict = "met" if budget.met else "MISSED"
            judged_by = budget.judged_by or budget.metric
            lines.append(
                f"budget    {verdict}, judged by {judged_by} [{', '.join(bounds)}]{kept}; "
                f"calibration {report.calibration.method}"
            )
            lines += [f"          {note}" for note in budget.fidelity_notes]
        else:
            lines.append(f"budget    {budget.message}")
    if files:
        lines.append(f"report    {files[-1]}  (+ {files[0].name})")
    return lines
