"""Choose the conversion steps a device profile needs and run them in order.

Cheap checks (profile, model, data, key) come first so bad input fails before any heavy work.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.contract.errors import EdgefleetError
from edgefleet.contract.manifest import ConversionMetrics, TensorSpec
from edgefleet.contract.profiles import ArtifactFormat, DeviceProfile, Precision, load_profile
from edgefleet.contract.signing import PRIVATE_KEY_FILE, default_key_dir, load_private_key
from edgefleet.converter.context import ConversionContext, ConversionRequest, Step
from edgefleet.converter.errors import ConversionError, UnsupportedTargetError
from edgefleet.converter.steps.calibration import LoadCalibration, LoadEvaluation
from edgefleet.converter.steps.describe import DescribeArtifact
from edgefleet.converter.steps.evaluate import Evaluate
from edgefleet.converter.steps.fp16_onnx import CopyOnnx, Fp16Onnx
from edgefleet.converter.steps.load_onnx import LoadOnnx
from edgefleet.converter.steps.onnx_to_keras import OnnxToKeras
from edgefleet.converter.steps.package import Package
from edgefleet.converter.steps.quantize_onnx import QuantizeOnnx
from edgefleet.converter.steps.quantize_tflite import QuantizeTflite

ProgressCallback = Callable[[int, int, str, float], None]  # (index, total, step name, seconds)


class LoadSigningKey:
    name = "load signing key"

    def run(self, ctx: ConversionContext) -> None:
        ctx.private_key = load_private_key(ctx.request.key or default_key_dir() / PRIVATE_KEY_FILE)


class CheckOutputDir:
    name = "check output directory"

    def run(self, ctx: ConversionContext) -> None:
        out = ctx.request.out
        if out.exists() and not out.is_dir():
            raise ConversionError(f"output {out} exists and is not a directory; pass a directory with --out")


def artifact_steps(profile: DeviceProfile) -> list[Step]:
    """The steps that make `profile`'s artifact; UnsupportedTargetError (with the reason) otherwise."""
    spec = profile.artifact
    wanted = f"{spec.format.value}/{spec.precision.value} with {spec.io_dtype} I/O"
    where = f"profile '{profile.name}' asks for {wanted}"
    if spec.format is ArtifactFormat.TFLITE:
        if spec.precision is not Precision.INT8 or spec.io_dtype == "float32":
            raise UnsupportedTargetError(
                f"{where}: TFLite artifacts are full-INT8 only (int8 or uint8 I/O, as the Edge TPU and "
                "XNNPACK's int8 path need); set io_dtype to int8 or uint8 in the profile"
            )
        return [OnnxToKeras(), QuantizeTflite(spec.io_dtype)]
    if spec.precision is Precision.INT8:
        if spec.io_dtype != "float32":
            raise UnsupportedTargetError(
                f"{where}: INT8 ONNX artifacts are QDQ models that keep float32 I/O; set io_dtype: float32"
            )
        return [QuantizeOnnx(spec.quant_flavor)]
    if spec.precision is Precision.FP16:
        return [Fp16Onnx()]
    return [CopyOnnx()]


def plan(profile: DeviceProfile) -> list[Step]:
    return [
        LoadOnnx(),
        LoadCalibration(),
        LoadEvaluation(),
        LoadSigningKey(),
        CheckOutputDir(),
        *artifact_steps(profile),
        DescribeArtifact(),
        Evaluate(),
        Package(),
    ]


@dataclass(frozen=True)
class ConversionResult:
    bundle_path: Path
    profile: DeviceProfile
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metrics: ConversionMetrics
    notes: list[str]
    step_seconds: dict[str, float]
    total_seconds: float


def run_steps(
    ctx: ConversionContext, steps: list[Step], progress: ProgressCallback | None = None
) -> dict[str, float]:
    timings: dict[str, float] = {}
    for index, step in enumerate(steps, start=1):
        start = time.perf_counter()
        try:
            step.run(ctx)
        except EdgefleetError:
            raise
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConversionError(
                f"step '{step.name}' failed for {ctx.request.model} -> profile '{ctx.profile.name}': "
                f"{type(exc).__name__}: {detail[:300]}"
            ) from exc
        timings[step.name] = time.perf_counter() - start
        if progress is not None:
            progress(index, len(steps), step.name, timings[step.name])
    return timings


def convert(request: ConversionRequest, progress: ProgressCallback | None = None) -> ConversionResult:
    """Convert `request.model` for `request.profile` and write the signed bundle into `request.out`."""
    start = time.perf_counter()
    profile = load_profile(request.profile)
    steps = plan(profile)
    with tempfile.TemporaryDirectory(prefix="edgefleet-convert-") as work:
        ctx = ConversionContext(request=request, profile=profile, work_dir=Path(work))
        timings = run_steps(ctx, steps, progress)
    return ConversionResult(
        bundle_path=ctx.need(ctx.bundle_path, "the bundle"),
        profile=profile,
        inputs=ctx.inputs,
        outputs=ctx.outputs,
        metrics=ctx.need(ctx.metrics, "the metrics"),
        notes=ctx.notes,
        step_seconds=timings,
        total_seconds=time.perf_counter() - start,
    )
