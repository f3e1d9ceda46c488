"""`edgefleet convert`: parse the arguments into a ConversionRequest, run the pipeline, print a summary."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.errors import ConversionError
from edgefleet.converter.pipeline import ConversionResult, convert


def request_from_args(args: argparse.Namespace) -> ConversionRequest:
    try:
        return ConversionRequest(
            model=args.model,
            profile=args.profile,
            calib=args.calib,
            eval=args.eval,
            out=args.out,
            name=args.name or args.model.stem,
            version=args.model_version,
            key=args.key,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConversionError(
            f"--{field} {first.get('input')!r}: {first['msg']} (use letters, digits, '.', '_', '-')"
        ) from exc


def _progress(index: int, total: int, name: str, seconds: float) -> None:
    print(f"  [{index:>2}/{total}] {name:<32} {seconds:6.2f} s", file=sys.stderr, flush=True)


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.2f} MiB"


def format_summary(result: ConversionResult) -> str:
    metrics, spec = result.metrics, result.profile.artifact
    lines = [
        f"profile   {result.profile.name}: {spec.format.value}/{spec.precision.value}, I/O {spec.io_dtype}"
    ]
    accuracy = metrics.accuracy
    if accuracy is None:
        lines.append("accuracy  not measured (pass --eval EVAL.npz)")
    elif accuracy.metric == "top1":
        lines.append(
            f"accuracy  top-1 on {accuracy.samples} samples: fp32 {accuracy.fp32:.2f}% -> artifact "
            f"{accuracy.artifact:.2f}% (drop {accuracy.drop_points:+.2f} points)"
        )
    else:
        lines.append(
            f"accuracy  top-1 agreement with fp32 on {accuracy.samples} samples: {accuracy.artifact:.2f}%"
        )
    lines.append(
        f"size      fp32 {_size(metrics.size_bytes_fp32)} -> artifact {_size(metrics.size_bytes_artifact)} "
        f"({metrics.size_bytes_artifact / metrics.size_bytes_fp32:.2f}x)"
    )
    lines.append(
        f"latency   host, 1 thread, batch 1: fp32 {metrics.host_latency_ms_fp32:.3f} ms -> artifact "
        f"{metrics.host_latency_ms_artifact:.3f} ms ({metrics.host_runtime})"
    )
    lines.extend(f"note      {note}" for note in result.notes)
    lines.append(f"bundle    {result.bundle_path}  ({result.total_seconds:.1f} s)")
    return "\n".join(lines)


def run_convert(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    print(f"converting {request.model} for profile '{request.profile}'", file=sys.stderr, flush=True)
    result = convert(request, progress=_progress)
    print(format_summary(result))
    return 0
