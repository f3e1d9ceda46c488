"""`edgefleet convert`: parse the arguments into a ConversionRequest, run the pipeline, print a summary."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from edgefleet.contract.manifest import AccuracyMetrics
from edgefleet.contract.profiles import list_profiles, load_profile
from edgefleet.converter.compression.stats import summary_lines
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.errors import ConversionError, TargetRefusedError
from edgefleet.converter.fidelity.kinds import parse_output_kinds
from edgefleet.converter.fidelity.outputs import MEASURE_LABELS, whole_samples
from edgefleet.converter.inputs.images import preprocessing_from_flags
from edgefleet.converter.inputs.sources import default_name
from edgefleet.converter.native_output import native_stderr_to_log
from edgefleet.converter.pipeline import ConversionResult, ProfileFailure, convert, convert_many
from edgefleet.converter.profiles_summary import profiles_summary
from edgefleet.converter.progress_display import conversion_progress
from edgefleet.converter.report import report_lines
from edgefleet.converter.steps.input_shapes import parse_input_shapes
from edgefleet.converter.target_display import show_refusal, target_lines, warn_if_not_compiled


def profile_names(text: str) -> list[str]:
    """--profile: one name, several separated by commas, or `all`; unknown names fail before any work, with
    the closest known name."""
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if names == ["all"]:
        return [profile.name for profile in list_profiles()]
    if not names:
        raise ConversionError("--profile: name a profile, several as rpi4,coral-usb, or all")
    for name in names:
        load_profile(name)
    return names


def request_from_args(args: argparse.Namespace, profile: str) -> ConversionRequest:
    try:
        return ConversionRequest(
            model=args.model,
            profile=profile,
            calib=args.calib,
            eval=args.eval,
            out=args.out,
            name=args.name or default_name(args.model),
            version=args.model_version,
            key=args.key,
            max_drop=args.max_drop,
            allow_low_accuracy=args.allow_low_accuracy,
            output_kinds=parse_output_kinds(args.output_kinds),
            min_sqnr=args.min_sqnr,
            metric=args.metric,
            calib_method=args.calib_method,
            report_dir=args.report_dir,
            precision=args.precision,
            input_shapes=parse_input_shapes(args.input_shapes),
            opset=args.opset,
            images=preprocessing_from_flags(
                args.image_size, args.image_layout, args.image_channel_order, args.image_mean, args.image_std
            ),
            train=args.train,
            prune=args.prune,
            prune_criterion=args.prune_criterion,
            prune_global=args.prune_global,
            prune_max_layer_ratio=args.prune_max_layer_ratio,
            prune_protect=tuple(args.prune_protect),
            prune_steps=args.prune_steps,
            sparsity_reg=args.sparsity_reg,
            sparsity_epochs=args.sparsity_epochs,
            sparsity_2_4=args.sparsity_2_4,
            qat_epochs=args.qat_epochs,
            distill_features=tuple(n.strip() for n in (args.distill_features or "").split(",") if n.strip()),
            distill_epochs=args.distill_epochs,
            low_rank=args.low_rank,
            low_rank_conv=args.low_rank_conv,
            magnitude_prune=args.magnitude_prune,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        hint = " (use letters, digits, '.', '_', '-')" if field in ("name", "version") else ""
        if field == "metric":
            hint = " (expected package.module:function, e.g. mymetrics.ocr:cer_drop)"
        raise ConversionError(
            f"--{field.replace('_', '-')} {first.get('input')!r}: {first['msg']}{hint}"
        ) from exc


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.2f} MiB"


def accuracy_text(accuracy: AccuracyMetrics) -> str:
    """The headline measure in words: top-1 (labels), agreement, a task measure or SQNR, and its output."""
    measure = accuracy.measure or accuracy.metric
    where = f", output '{accuracy.output}'" if accuracy.output else ""
    samples = f"{accuracy.samples} samples"
    if measure == "top1":
        lost = whole_samples(accuracy.drop_points, accuracy.samples)
        return (
            f"top-1 on {samples}: fp32 {accuracy.fp32:.2f}% -> artifact {accuracy.artifact:.2f}% "
            f"(drop {accuracy.drop_points:+.2f} points, {lost}){where}"
        )
    if measure == "top1_agreement":
        differ = whole_samples(100 - accuracy.artifact, accuracy.samples)
        return f"top-1 agreement with fp32 on {samples}: {accuracy.artifact:.2f}% ({differ} differ){where}"
    if accuracy.unit == "dB":
        return f"SQNR vs fp32 on {samples}: {accuracy.artifact:.1f} dB{where}"
    return (
        f"{MEASURE_LABELS.get(measure, measure)} on {samples}: {accuracy.artifact:.2f}% "
        f"(drop {accuracy.drop_points:+.2f} points){where}"
    )


def format_summary(result: ConversionResult) -> str:
    metrics, spec = result.metrics, result.profile.artifact
    lines = [
        f"profile   {result.profile.name}: {spec.format.value}/{spec.precision.value}, I/O {spec.io_dtype}"
    ]
    accuracy = metrics.accuracy
    if accuracy is None:
        lines.append("accuracy  not measured (pass --eval EVAL.npz)")
    else:
        lines.append(f"accuracy  {accuracy_text(accuracy)}")
    lines.append(
        f"size      fp32 {_size(metrics.size_bytes_fp32)} -> artifact {_size(metrics.size_bytes_artifact)} "
        f"({metrics.size_bytes_artifact / metrics.size_bytes_fp32:.2f}x)"
    )
    lines.append(
        f"latency   host, 1 thread, batch 1: fp32 {metrics.host_latency_ms_fp32:.3f} ms -> artifact "
        f"{metrics.host_latency_ms_artifact:.3f} ms ({metrics.host_runtime})"
    )
    for report in result.compression:  # before/after of each compression method, in the order applied
        first, *rest = summary_lines(report)
        lines += [f"compress  {first}", *(f"          {line}" for line in rest)]
    lines.extend(target_lines(result))
    lines.extend(report_lines(result.report, result.report_files))
    lines.extend(f"note      {note}" for note in result.notes)
    lines.append(f"bundle    {result.bundle_path}  ({result.total_seconds:.1f} s)")
    return "\n".join(lines)


def run_convert(args: argparse.Namespace) -> int:
    names = profile_names(args.profile)
    request = request_from_args(args, names[0])
    if len(names) > 1:
        return _run_convert_many(args, request, names)
    print(f"converting {request.model} for profile '{request.profile}'", file=sys.stderr, flush=True)
    try:
        with _quiet_toolchains(args.verbose), conversion_progress() as display:
            result = convert(request, progress=display.step_done, status=display.status)
    except TargetRefusedError as exc:
        show_refusal(exc)
        raise
    if args.json and result.report is not None:
        print(result.report.model_dump_json(indent=2))
    else:
        print(format_summary(result))
    warn_if_not_compiled(result.target_checks)
    return 0


def _run_convert_many(args: argparse.Namespace, request: ConversionRequest, names: list[str]) -> int:
    start = time.perf_counter()
    print(f"converting {request.model} for {len(names)} profiles: {', '.join(names)}", file=sys.stderr)
    with _quiet_toolchains(args.verbose), conversion_progress() as display:

        def starting(name: str, index: int) -> None:
            display.progress.console.print(f"profile {name} ({index + 1} of {len(names)})", highlight=False)

        outcomes = convert_many(request, names, starting, display.step_done, display.status)
    if args.json:
        print(json.dumps([_json_outcome(outcome) for outcome in outcomes], indent=2))
    else:
        print("\n".join(profiles_summary(outcomes, time.perf_counter() - start)))
    warned = set()  # one panel per distinct reason (coral-usb and coral-devboard share it)
    for outcome in outcomes:
        checks = outcome.target_checks if isinstance(outcome, ConversionResult) else None
        edgetpu = checks.edgetpu if checks is not None else None
        if edgetpu is not None and edgetpu.compilation.detail not in warned:
            warned.add(edgetpu.compilation.detail)
            warn_if_not_compiled(checks)
    return 0 if all(isinstance(outcome, ConversionResult) for outcome in outcomes) else 1


def _json_outcome(outcome: ConversionResult | ProfileFailure) -> dict[str, object]:
    if isinstance(outcome, ProfileFailure):
        return {"profile": outcome.profile, "error": str(outcome.error)}
    report = outcome.report.model_dump(mode="json") if outcome.report is not None else None
    return {"profile": outcome.profile.name, "bundle": str(outcome.bundle_path), "report": report}


@contextmanager
def _quiet_toolchains(verbose: bool) -> Iterator[None]:
    """The toolchains' own stderr goes to a log file (kept, and named, only when the conversion fails)."""
    if verbose:
        yield
        return
    log: Path | None = None
    try:
        with native_stderr_to_log() as log:
            yield
    except BaseException:
        if log is not None and log.exists():
            print(f"the toolchains' own output is in {log}", file=sys.stderr)
        raise
    if log is not None:
        log.unlink(missing_ok=True)
