"""Choose the conversion steps a device profile needs and run them in order.

Cheap checks (profile, model, data, key) come first so bad input fails before any heavy work.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.contract.errors import EdgefleetError
from edgefleet.contract.manifest import ArtifactAlternative, ConversionMetrics, TensorSpec
from edgefleet.contract.profiles import ArtifactFormat, DeviceProfile, Precision, load_profile
from edgefleet.contract.signing import PRIVATE_KEY_FILE, default_key_dir, load_private_key
from edgefleet.contract.target_checks import TargetChecks
from edgefleet.converter.compression import steps as compression
from edgefleet.converter.compression.stats import CompressionReport
from edgefleet.converter.context import ConversionContext, ConversionRequest, Step
from edgefleet.converter.errors import ConversionError, InputDataError, UnsupportedTargetError, first_line
from edgefleet.converter.inputs import sources
from edgefleet.converter.report import BuildReport, CheckBudget, ConversionReport, WriteReport
from edgefleet.converter.shared_work import SharedWork
from edgefleet.converter.steps.calibration import LoadCalibration, LoadEvaluation
from edgefleet.converter.steps.describe import DescribeArtifact
from edgefleet.converter.steps.evaluate import CheckFidelityOptions, Evaluate
from edgefleet.converter.steps.fold_constants import FoldConstants
from edgefleet.converter.steps.fp16_onnx import CopyOnnx, Fp16Onnx
from edgefleet.converter.steps.layer_error import MeasureLayerErrors
from edgefleet.converter.steps.load_onnx import LoadOnnx
from edgefleet.converter.steps.mixed_precision import EnforceBudget
from edgefleet.converter.steps.onnx_to_keras import OnnxToKeras
from edgefleet.converter.steps.package import Package
from edgefleet.converter.steps.quantize_onnx import QuantizeOnnx
from edgefleet.converter.steps.quantize_tflite import QuantizeTflite
from edgefleet.converter.targets import alternative_steps, target_check_steps, with_precision

ProgressCallback = Callable[[int, int, str, float], None]  # (index, total, step name, seconds)
StatusCallback = Callable[[str], None]  # what is running now: a step's name, or detail inside a long step


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


def plan(
    profile: DeviceProfile, request: ConversionRequest | None = None, has_module: bool = False
) -> list[Step]:
    """`request` adds the steps for its source (PyTorch, Keras, image folders) and its compression options;
    `has_module`: the caller passes the torch.nn.Module itself."""
    kind = sources.source_kind(request.model, has_module) if request is not None else "onnx"
    artifact = artifact_steps(profile)
    if kind == "keras":  # the Keras model itself is the TFLite converter's input
        artifact = [step for step in artifact if not isinstance(step, OnnxToKeras)]
    return [
        *(compression.check_steps(request, kind) if request else []),
        *(sources.source_steps(request, has_module) if request else []),
        LoadOnnx(),
        *(sources.data_steps(request) if request else []),
        LoadCalibration(),
        LoadEvaluation(),
        CheckFidelityOptions(),  # --output-kind names real outputs, --metric imports: before any long step
        *(compression.data_steps(request) if request else []),
        LoadSigningKey(),
        CheckOutputDir(),
        *(compression.compression_steps(request) if request else []),
        # After the cheap checks and compression (which reloads the model from its file): weights stored as
        # Constant nodes become initializers, quantized per channel, not at run time.
        FoldConstants(),
        *artifact,
        DescribeArtifact(),
        EnforceBudget(quantizer=artifact[-1], describe=DescribeArtifact()),  # mixed precision if needed
        *(compression.artifact_check_steps(request) if request else []),
        *target_check_steps(profile),
        Evaluate(),
        *alternative_steps(profile),
        MeasureLayerErrors(),
        BuildReport(),
        CheckBudget(),  # a missed budget: the report is written, no bundle
        Package(),
        WriteReport(),
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
    compression: list[CompressionReport] = field(default_factory=list)  # before/after, one per method
    target_checks: TargetChecks | None = None  # Edge TPU / TensorRT / XNNPACK findings (also in the manifest)
    alternatives: list[ArtifactAlternative] = field(default_factory=list)  # other model files in the bundle
    report_files: list[Path] = field(default_factory=list)  # report.json, report.html
    report: ConversionReport | None = None  # what report.json holds (also in the manifest)


def run_steps(
    ctx: ConversionContext,
    steps: list[Step],
    progress: ProgressCallback | None = None,
    status: StatusCallback | None = None,
) -> dict[str, float]:
    timings = ctx.step_seconds  # the report lists them too
    for index, step in enumerate(steps, start=1):
        if status is not None:
            status(step.name)
            ctx.detail = lambda text, name=step.name: status(f"{name}: {text}")
        start = time.perf_counter()
        try:
            step.run(ctx)
        except EdgefleetError:
            raise
        except Exception as exc:
            detail = first_line(exc, "")
            raise ConversionError(
                f"step '{step.name}' failed for {ctx.source_model} -> profile '{ctx.profile.name}': "
                f"{type(exc).__name__}: {detail[:300]}"
            ) from exc
        timings[step.name] = time.perf_counter() - start
        if progress is not None:
            progress(index, len(steps), step.name, timings[step.name])
    return timings


def convert(
    request: ConversionRequest,
    progress: ProgressCallback | None = None,
    torch_module: Any = None,
    status: StatusCallback | None = None,
    shared: SharedWork | None = None,
) -> ConversionResult:
    """Convert `request.model` for `request.profile` and write the signed bundle into `request.out`.

    `request.model` is an fp32 .onnx, a .keras/.h5 file or `package.module:factory`; or pass the
    torch.nn.Module as `torch_module` (request.model then only names it in messages). `shared` carries
    what an earlier conversion of the same model computed (see convert_many)."""
    start = time.perf_counter()
    profile = with_precision(load_profile(request.profile), request)  # --precision, within what it runs
    steps = plan(profile, request, has_module=torch_module is not None)
    with tempfile.TemporaryDirectory(prefix="edgefleet-convert-") as work:
        ctx = ConversionContext(
            request=request,
            profile=profile,
            work_dir=Path(work),
            torch_module=torch_module,
            shared=shared if shared is not None else SharedWork(),
        )
        timings = run_steps(ctx, steps, progress, status)
    return ConversionResult(
        bundle_path=ctx.need(ctx.bundle_path, "the bundle"),
        profile=profile,
        inputs=ctx.inputs,
        outputs=ctx.outputs,
        metrics=ctx.need(ctx.metrics, "the metrics"),
        notes=ctx.notes,
        step_seconds=timings,
        total_seconds=time.perf_counter() - start,
        compression=ctx.compression,
        target_checks=ctx.target_checks,
        alternatives=ctx.alternatives,
        report_files=ctx.report_files,
        report=ctx.report,
    )


@dataclass(frozen=True)
class ProfileFailure:
    """A profile of `convert_many` that made no bundle, and why (the others go on)."""

    profile: str
    error: ConversionError


def convert_many(
    request: ConversionRequest,
    profiles: list[str],
    on_start: Callable[[str, int], None] | None = None,
    progress: ProgressCallback | None = None,
    status: StatusCallback | None = None,
) -> list[ConversionResult | ProfileFailure]:
    """Convert one model for several profiles, one bundle each, in the order given. The Keras translation,
    the TFLite calibration pass and the activation ranges are computed once for the profiles that share
    them (see SharedWork); a profile that fails is reported and the rest still convert. `on_start(profile,
    index)` is called before each. Errors about the inputs rather than a target (data files, signing key)
    stop the run. With --report-dir, each profile's report goes into a sub-directory of its name."""
    shared = SharedWork()
    outcomes: list[ConversionResult | ProfileFailure] = []
    for index, name in enumerate(profiles):
        if on_start is not None:
            on_start(name, index)
        update: dict[str, Any] = {"profile": name}
        if request.report_dir is not None:
            update["report_dir"] = request.report_dir / name
        try:
            outcomes.append(convert(request.model_copy(update=update), progress, None, status, shared))
        except InputDataError:
            raise  # the data files do not fit the model: every profile would say the same
        except ConversionError as exc:  # about this profile's target (or a key/profile error: raised)
            outcomes.append(ProfileFailure(name, exc))
    return outcomes
