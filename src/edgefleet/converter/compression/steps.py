"""Compression as pipeline steps, run after the data is loaded and before the artifact is built: each one
replaces the fp32 model the later steps read and appends a before/after CompressionReport to the context.
Order: channel pruning (PyTorch, with distillation), low-rank factorization, magnitude pruning (ONNX).
"""

from __future__ import annotations

from edgefleet.contract.profiles import ArtifactFormat
from edgefleet.converter.compression.stats import CompressionReport, compare
from edgefleet.converter.context import ConversionContext, ConversionRequest, Step
from edgefleet.converter.errors import ConversionError
from edgefleet.converter.inputs.sources import SourceKind, export_shapes, use_fp32_model
from edgefleet.converter.steps.calibration import TensorSet, load_tensor_set

MIN_TRAINING_SAMPLES = 10


def _record(ctx: ConversionContext, report: CompressionReport) -> None:
    """Keep the report; warn when compression alone costs more than the accuracy budget, which the
    artifact's drop is checked against (measured from the compressed fp32 model, not the original)."""
    ctx.compression.append(report)
    drop = report.accuracy_drop_points
    budget = ctx.request.max_drop
    if budget is None:
        budget = ctx.profile.max_accuracy_drop_points
    if drop is not None and drop > budget:
        ctx.notes.append(
            f"WARNING: {report.method.replace('_', ' ')} ({report.setting}) alone loses {drop:.2f} points "
            f"before quantization, more than the {budget:.2f}-point budget the artifact is checked against; "
            "choose a milder setting"
        )


def _measure_set(ctx: ConversionContext) -> TensorSet:
    """Where compression is scored: the evaluation set, else the calibration set (agreement only)."""
    if ctx.eval is not None:
        return ctx.eval
    return ctx.need(ctx.calib, "calibration data")


class CheckCompressionOptions:
    """Refuse combinations that cannot work before any heavy step runs."""

    name = "check compression options"

    def __init__(self, kind: SourceKind) -> None:
        self.kind = kind

    def run(self, ctx: ConversionContext) -> None:
        request = ctx.request
        if request.prune is not None and self.kind != "pytorch":
            raise ConversionError(
                f"--prune {request.prune}: channel pruning needs the PyTorch model (it retrains it); pass "
                "`package.module:factory` with --input-shape, or use --low-rank / --magnitude-prune on "
                f"this {self.kind} model"
            )
        onnx_level = [
            flag
            for flag, value in (
                ("--low-rank", request.low_rank),
                ("--magnitude-prune", request.magnitude_prune),
            )
            if value is not None
        ]
        if onnx_level and self.kind == "keras" and ctx.profile.artifact.format is ArtifactFormat.TFLITE:
            raise ConversionError(
                f"{', '.join(onnx_level)} rewrite the ONNX graph, but a Keras model goes to TFLite directly "
                f"(profile '{ctx.profile.name}'); compress the Keras model itself, or convert for an ONNX "
                "profile"
            )
        if request.train is not None and request.prune is None:
            raise ConversionError(
                f"--train {request.train} is recovery data for --prune; pass --prune RATIO too"
            )


class LoadTrainingData:
    """The recovery-training set for --prune (`--train`, labels `y` optional)."""

    name = "load training data"

    def run(self, ctx: ConversionContext) -> None:
        if ctx.request.train is not None:
            info = ctx.need(ctx.model_info, "the model description")
            ctx.train = load_tensor_set(ctx.request.train, info, "training", MIN_TRAINING_SAMPLES)


class PruneChannels:
    """torch-pruning removes `ratio` of the channels; distillation from the unpruned model recovers."""

    name = "prune channels + distill"

    def run(self, ctx: ConversionContext) -> None:
        from edgefleet.converter.compression.distill import DistillConfig, distill
        from edgefleet.converter.compression.prune import prune_channels
        from edgefleet.converter.inputs.pytorch import example_inputs, export_module, require_compress_extra

        require_compress_extra(("torch", "torch_pruning"), "--prune")
        request = ctx.request
        ratio = ctx.need(request.prune, "the pruning ratio")
        teacher = ctx.need(ctx.torch_module, "the PyTorch model")
        shapes = export_shapes(request, f"model '{request.model}'")
        student = prune_channels(teacher, example_inputs(shapes), ratio)
        data = ctx.train if ctx.train is not None else ctx.need(ctx.calib, "calibration data")
        config = DistillConfig(epochs=request.distill_epochs)

        def on_epoch(epoch: int, epochs: int, loss: float) -> None:
            if ctx.detail is not None:
                ctx.detail(f"distillation epoch {epoch}/{epochs}, loss {loss:.4f}")

        distill(student, teacher, [data.inputs[name] for name in shapes], data.labels, config, on_epoch)
        pruned = ctx.work_dir / "pruned.onnx"
        export_module(student, shapes, pruned, request.opset)
        source = "--train" if ctx.train is not None else "the calibration set"
        labels = "with its labels" if data.labels is not None else "unlabeled (soft targets only)"
        report = compare(
            "channel_pruning",
            f"ratio {ratio:g}, distillation {config.epochs} epochs at T={config.temperature:g}"
            + (", mixup" if config.mixup else ""),
            request.model,
            pruned,
            _measure_set(ctx),
            notes=[f"recovery: {data.samples} samples from {source}, {labels}"],
        )
        _record(ctx, report)
        ctx.torch_module = student
        use_fp32_model(ctx, pruned)


class LowRank:
    """Truncated SVD of fully-connected and 1x1-conv weights where it saves MACs."""

    name = "low-rank factorization"

    def run(self, ctx: ConversionContext) -> None:
        import onnx

        from edgefleet.converter.compression.lowrank import low_rank_factorize

        energy = ctx.need(ctx.request.low_rank, "the energy threshold")
        before = ctx.request.model
        factorized, decisions = low_rank_factorize(onnx.load(str(before)), energy)
        applied = [d for d in decisions if d.applied]
        after = ctx.work_dir / "low_rank.onnx"
        onnx.save(factorized, str(after))
        notes = []
        if not decisions:
            notes.append(
                "no Gemm, MatMul with a constant 2-D weight, or 1x1 Conv to factorize: model unchanged"
            )
        elif not applied:
            notes.append(f"no layer kept {energy:g} of its energy at a rank that saves MACs: model unchanged")
        report = compare(
            "low_rank",
            f"energy {energy:g}, {len(applied)} of {len(decisions)} layers factorized",
            before,
            after,
            _measure_set(ctx),
            layers=[d.describe() for d in decisions],
            notes=notes,
        )
        _record(ctx, report)
        if applied:
            use_fp32_model(ctx, after)


class MagnitudePrune:
    """Unstructured zeros in the weights, reported with what they do not buy."""

    name = "magnitude pruning"

    def run(self, ctx: ConversionContext) -> None:
        import onnx

        from edgefleet.converter.compression.magnitude import honest_notes, magnitude_prune

        sparsity = ctx.need(ctx.request.magnitude_prune, "the sparsity")
        before = ctx.request.model
        pruned, lines = magnitude_prune(onnx.load(str(before)), sparsity)
        after = ctx.work_dir / "magnitude.onnx"
        onnx.save(pruned, str(after))
        report = compare(
            "magnitude_pruning",
            f"sparsity {sparsity:g} per weight tensor",
            before,
            after,
            _measure_set(ctx),
            layers=lines,
        )
        report.notes.extend(honest_notes(report))
        _record(ctx, report)
        use_fp32_model(ctx, after)


def check_steps(request: ConversionRequest, kind: SourceKind) -> list[Step]:
    """Cheap checks for the compression options, first in the plan (empty when none were asked for)."""
    asked = (request.prune, request.low_rank, request.magnitude_prune, request.train)
    return [CheckCompressionOptions(kind)] if any(v is not None for v in asked) else []


def data_steps(request: ConversionRequest) -> list[Step]:
    """Loading the recovery-training set, with the other data loads (before any heavy step)."""
    return [LoadTrainingData()] if request.train is not None else []


def compression_steps(request: ConversionRequest) -> list[Step]:
    """The compressing steps, in order (empty when none were asked for)."""
    steps: list[Step] = []
    if request.prune is not None:
        steps.append(PruneChannels())
    if request.low_rank is not None:
        steps.append(LowRank())
    if request.magnitude_prune is not None:
        steps.append(MagnitudePrune())
    return steps
