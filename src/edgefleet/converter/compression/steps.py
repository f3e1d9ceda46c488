"""Compression as pipeline steps, run after the data is loaded and before the artifact is built: each one
replaces the fp32 model the later steps read and appends a before/after CompressionReport to the context.
Order: channel pruning and 2:4 sparsity (PyTorch, with distillation), low-rank factorization and magnitude
pruning (ONNX), then quantization-aware training (PyTorch) last, so that no later rewrite moves the weights
off their int8 grid. After the artifact is built, CheckSparsePattern decides whether it is marked 2:4.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from edgefleet.contract.profiles import ArtifactFormat, Precision
from edgefleet.converter.compression.stats import CompressionReport, compare
from edgefleet.converter.context import ConversionContext, ConversionRequest, Step
from edgefleet.converter.errors import ConversionError
from edgefleet.converter.inputs.sources import SourceKind, export_shapes, use_fp32_model
from edgefleet.converter.steps.calibration import TensorSet, load_tensor_set

MIN_TRAINING_SAMPLES = 10
# QAT fine-tunes a converged model: Adam at a tenth or less of the recovery rate after pruning (3e-3); at
# 3e-3 QAT on 64 calibration samples moved MobileNetV3 away from its training (89.45 top-1 against 97.27)
QAT_LEARNING_RATE = 1e-4


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
        if request.distill_features and request.prune is None and not request.sparsity_2_4:
            raise ConversionError(
                "--distill-features shapes the recovery training of --prune or --sparsity-2-4; pass one of "
                "them"
            )
        if request.qat_epochs is not None:
            if self.kind != "pytorch":
                raise ConversionError(
                    "--qat fine-tunes the model: it needs the PyTorch model; pass `package.module:factory` "
                    "with --input-shape"
                )
            if ctx.profile.artifact.precision is not Precision.INT8:
                raise ConversionError(
                    f"--qat trains for int8; profile '{ctx.profile.name}' makes a "
                    f"{ctx.profile.artifact.precision.value} artifact"
                )
        if request.low_rank_conv and request.low_rank is None:
            raise ConversionError(
                "--low-rank-conv extends --low-rank to KxK convolutions; pass --low-rank ENERGY"
            )
        if request.sparsity_2_4 and self.kind != "pytorch":
            raise ConversionError(
                "--sparsity-2-4 fine-tunes the model with the masks kept: it needs the PyTorch model; pass "
                "`package.module:factory` with --input-shape"
            )
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
        pruning_options = pruning_flags(request)
        if pruning_options and request.prune is None:
            raise ConversionError(f"{', '.join(pruning_options)} shape --prune; pass --prune RATIO too")
        if request.train is not None and not trains(request):
            raise ConversionError(
                f"--train {request.train} is the fine-tuning data of --prune, --sparsity-2-4 or --qat; pass "
                "one of them"
            )


def trains(request: ConversionRequest) -> bool:
    """Does any compression step fine-tune the model (and so read `--train`)?"""
    return request.prune is not None or request.sparsity_2_4 or request.qat_epochs is not None


class LoadTrainingData:
    """The fine-tuning set of --prune, --sparsity-2-4 and --qat (`--train`, labels `y` optional)."""

    name = "load training data"

    def run(self, ctx: ConversionContext) -> None:
        if ctx.request.train is not None:
            info = ctx.need(ctx.model_info, "the model description")
            ctx.train = load_tensor_set(ctx.request.train, info, "training", MIN_TRAINING_SAMPLES)


def _distill_config(ctx: ConversionContext, teacher: Any, shapes: dict[str, list[int]]) -> Any:
    """The recovery training of --distill-epochs, with feature alignment on the --distill-features layers."""
    from edgefleet.converter.compression.distill import DistillConfig, feature_layers
    from edgefleet.converter.compression.prune import output_layers
    from edgefleet.converter.inputs.pytorch import example_inputs

    request = ctx.request
    layers: tuple[str, ...] = ()
    if request.distill_features:
        names = {layer: name for name, layer in teacher.named_modules()}
        outputs = {names[layer] for layer in output_layers(teacher, example_inputs(shapes))}
        layers = feature_layers(request.distill_features, teacher, outputs)
    return DistillConfig(epochs=request.distill_epochs, feature_layers=layers)


def _distill_setting(config: Any) -> str:
    features = f", features of {', '.join(config.feature_layers)}" if config.feature_layers else ""
    return (
        f"distillation {config.epochs} epochs at T={config.temperature:g}, lr {config.learning_rate:g}"
        + (", mixup" if config.mixup else "")
        + (", BatchNorm statistics frozen" if config.freeze_batchnorm else "")
        + features
    )


def _feature_note(losses: list[float]) -> list[str]:
    """What feature alignment achieved: its MSE in the first and the last epoch."""
    if not losses:
        return []
    return [f"feature alignment MSE: {losses[0]:.4g} in the first epoch -> {losses[-1]:.4g} in the last"]


class PruneChannels:
    """torch-pruning removes `ratio` of the channels, ranked by the chosen criterion, in one or more steps;
    distillation from the unpruned model recovers after each step."""

    name = "prune channels + distill"

    def run(self, ctx: ConversionContext) -> None:
        import copy

        from edgefleet.converter.compression.distill import distill
        from edgefleet.converter.compression.prune import (
            SMALL_SCALE,
            PruneOptions,
            channel_counts,
            penalized_scales,
            prune_channels,
            sparsity_penalty,
        )
        from edgefleet.converter.inputs.pytorch import example_inputs, export_module, require_compress_extra

        require_compress_extra(("torch", "torch_pruning"), "--prune")
        request = ctx.request
        options = PruneOptions(
            ratio=ctx.need(request.prune, "the pruning ratio"),
            criterion=request.prune_criterion,
            global_allocation=request.prune_global,
            max_layer_ratio=request.prune_max_layer_ratio,
            protected=request.prune_protect,
        )
        teacher = ctx.need(ctx.torch_module, "the PyTorch model")
        shapes = export_shapes(request, f"model '{request.model}'")
        data = ctx.train if ctx.train is not None else ctx.need(ctx.calib, "calibration data")
        inputs = [data.inputs[name] for name in shapes]
        steps = request.prune_steps
        config = _distill_config(ctx, teacher, shapes)
        # iterative: the epochs are shared out, a part after every step (the last step gets the rest)
        per_step = replace(config, epochs=config.epochs // steps)

        def on_epoch(epoch: int, epochs: int, loss: float) -> None:
            if ctx.detail is not None:
                ctx.detail(f"distillation epoch {epoch}/{epochs}, loss {loss:.4f}")

        def between_steps(model: Any, step: int) -> None:
            if ctx.detail is not None:
                ctx.detail(f"pruning step {step}/{steps} done; distilling")
            distill(model, teacher, inputs, data.labels, per_step, on_epoch)

        notes = [f"recovery: {data.samples} samples from {'--train' if ctx.train else 'the calibration set'}"]
        to_prune = teacher
        if request.sparsity_reg is not None:  # network slimming: drive channel scales to 0 first
            to_prune = copy.deepcopy(teacher)
            shrink, small_share = sparsity_penalty(to_prune, request.sparsity_reg)
            share_before = small_share(to_prune)
            regularized = replace(config, epochs=request.sparsity_epochs)
            distill(to_prune, teacher, inputs, data.labels, regularized, on_epoch, shrink)
            notes.append(
                f"sparsity training: L1 shrink {request.sparsity_reg:g} per step on "
                f"{penalized_scales(to_prune)} for {request.sparsity_epochs} epochs; scales below "
                f"{SMALL_SCALE:g}: {share_before:.0%} -> {small_share(to_prune):.0%}"
            )
        try:
            student = prune_channels(
                to_prune, example_inputs(shapes), options, inputs, data.labels, steps, between_steps
            )
        except ValueError as exc:
            raise ConversionError(f"--prune: {exc}") from exc
        last = replace(config, epochs=config.epochs - per_step.epochs * (steps - 1))
        aligned: list[float] = []
        distill(student, teacher, inputs, data.labels, last, on_epoch, feature_losses=aligned)
        notes += _feature_note(aligned)
        pruned = ctx.work_dir / "pruned.onnx"
        export_module(student, shapes, pruned, request.opset)
        labels = "with its labels" if data.labels is not None else "unlabeled (soft targets only)"
        notes[0] += f", {labels}"
        allocation = (
            f"global (at most {options.max_layer_ratio:g} per layer)"
            if options.global_allocation
            else "uniform"
        )
        before, after = channel_counts(teacher), channel_counts(student)
        report = compare(
            "channel_pruning",
            f"ratio {options.ratio:g} by {options.criterion}, {allocation}, {steps} step(s); "
            + _distill_setting(config),
            request.model,
            pruned,
            _measure_set(ctx),
            layers=[f"{name}: {before[name]} -> {after.get(name, 0)} channels" for name in before],
            notes=notes + ([f"protected: {', '.join(options.protected)}"] if options.protected else []),
        )
        _record(ctx, report)
        ctx.torch_module = student
        use_fp32_model(ctx, pruned)


class Sparsify24:
    """2:4 structured sparsity (Ampere tensor cores under TensorRT): magnitude masks, kept through
    distillation from the dense model."""

    name = "2:4 sparsity + distill"

    def run(self, ctx: ConversionContext) -> None:
        import copy

        import onnx

        from edgefleet.converter.compression.distill import distill
        from edgefleet.converter.compression.prune import output_layers
        from edgefleet.converter.compression.sparse24 import (
            PATTERN,
            apply_masks,
            keep_masks,
            onnx_weights_2_4,
        )
        from edgefleet.converter.inputs.pytorch import example_inputs, export_module, require_compress_extra

        require_compress_extra(("torch",), "--sparsity-2-4")
        request = ctx.request
        teacher = ctx.need(ctx.torch_module, "the PyTorch model")
        shapes = export_shapes(request, f"model '{request.model}'")
        data = ctx.train if ctx.train is not None else ctx.need(ctx.calib, "calibration data")
        student = copy.deepcopy(teacher)
        names = {layer: name for name, layer in student.named_modules()}
        outputs = {names[layer] for layer in output_layers(student, example_inputs(shapes))}
        masks, dense = apply_masks(student, skip=outputs)
        if not masks:
            raise ConversionError(
                "--sparsity-2-4: no Conv/Linear layer has input channels in multiples of 4: "
                + "; ".join(dense)
            )

        def on_epoch(epoch: int, epochs: int, loss: float) -> None:
            if ctx.detail is not None:
                ctx.detail(f"2:4 fine-tuning epoch {epoch}/{epochs}, loss {loss:.4f}")

        config = _distill_config(ctx, teacher, shapes)
        inputs = [data.inputs[name] for name in shapes]
        aligned: list[float] = []
        distill(student, teacher, inputs, data.labels, config, on_epoch, keep_masks(masks), aligned)
        after = ctx.work_dir / "sparse_2_4.onnx"
        export_module(student, shapes, after, request.opset)
        followed, candidates = onnx_weights_2_4(onnx.load(str(after)))
        if followed < len(masks):
            raise ConversionError(
                f"--sparsity-2-4: only {followed} of the {len(masks)} masked weights keep the 2:4 pattern in "
                "the exported ONNX; this is a converter bug - please report it with the model"
            )
        report = compare(
            "sparsity_2_4",
            f"{PATTERN} on {len(masks)} layers, masks kept; " + _distill_setting(config),
            request.model,
            after,
            _measure_set(ctx),
            layers=[f"{name}: {PATTERN}" for name in masks]
            + dense
            + [f"{n}: dense (an output layer)" for n in outputs],
            notes=[
                f"{PATTERN} pattern verified in the exported ONNX on {followed} of {candidates} weights",
                "the zeros are stored and multiplied like any other value except by TensorRT's sparse tensor "
                "cores (Ampere and later, e.g. Jetson Orin); speed-up not measured here (no such GPU)",
                *_feature_note(aligned),
            ],
        )
        _record(ctx, report)
        ctx.torch_module = student
        ctx.weight_sparsity = PATTERN
        use_fp32_model(ctx, after)


class CheckSparsePattern:
    """After the artifact is built: does it still carry the 2:4 pattern? Only then is the bundle marked for
    TensorRT's sparse kernels (a TFLite artifact is never: no TFLite runtime here uses 2:4)."""

    name = "check 2:4 pattern in the artifact"

    def run(self, ctx: ConversionContext) -> None:
        import onnx

        from edgefleet.converter.compression.sparse24 import onnx_weights_2_4

        if ctx.weight_sparsity is None:
            return
        artifact = ctx.need(ctx.artifact_path, "the artifact")
        if artifact.suffix != ".onnx":
            ctx.notes.append(
                f"2:4 sparsity: the {ctx.profile.name} artifact is {artifact.suffix[1:]}, whose runtimes "
                "multiply the zeros densely; the bundle is not marked for sparse kernels"
            )
            ctx.weight_sparsity = None
            return
        followed, candidates = onnx_weights_2_4(onnx.load(str(artifact)))
        if followed == 0:
            ctx.notes.append("2:4 sparsity: the artifact's weights lost the pattern; not marked for TensorRT")
            ctx.weight_sparsity = None
        else:
            ctx.notes.append(
                f"2:4 sparsity: {followed} of {candidates} weights of the artifact follow it; marked for "
                "TensorRT's sparse tensor cores (trt_sparsity_enable on the device)"
            )


class QuantizationAwareTraining:
    """Fine-tune with int8 simulated (weights per channel, activations per tensor, the target's scheme) and
    carry the activation ranges it learned to the artifact's quantization."""

    name = "quantization-aware training"

    def run(self, ctx: ConversionContext) -> None:
        import copy

        import onnx

        from edgefleet.converter.compression.distill import distill
        from edgefleet.converter.compression.qat import (
            float_modules,
            learned_onnx_ranges,
            quantization_simulated,
        )
        from edgefleet.converter.inputs.pytorch import export_module, require_compress_extra
        from edgefleet.converter.steps.quantize_onnx import rule_float_nodes

        require_compress_extra(("torch",), "--qat")
        request = ctx.request
        epochs = ctx.need(request.qat_epochs, "the QAT epochs")
        teacher = ctx.need(ctx.torch_module, "the PyTorch model")
        shapes = export_shapes(request, f"model '{request.model}'")
        data = ctx.train if ctx.train is not None else ctx.need(ctx.calib, "calibration data")
        inputs = [data.inputs[name] for name in shapes]
        symmetric = ctx.profile.artifact.quant_flavor == "tensorrt"
        student = copy.deepcopy(teacher)
        config = replace(
            _distill_config(ctx, teacher, shapes),
            epochs=epochs,
            mixup=False,
            learning_rate=QAT_LEARNING_RATE,
            freeze_batchnorm=True,
        )

        def on_epoch(epoch: int, total: int, loss: float) -> None:
            if ctx.detail is not None:
                ctx.detail(f"QAT epoch {epoch}/{total}, loss {loss:.4f}")

        # which ONNX tensor holds which module's output: compared by value on two samples
        sample = {name: data.inputs[name][:2] for name in shapes}
        # what the artifact keeps in float by rule (a detector's head) is trained in float too; targets that
        # need every op in int8 have no such nodes, and no module needs matching
        float_nodes = set(rule_float_nodes(ctx))
        keep_float: frozenset[str] = frozenset()
        if float_nodes:
            source = ctx.need(ctx.model, "the model's ONNX export")
            one = {name: values[:1] for name, values in sample.items()}  # the loaded model may fix batch 1
            keep_float = float_modules(teacher, source, one, float_nodes)
        with quantization_simulated(student, symmetric, keep_float) as ranges:
            distill(student, teacher, inputs, data.labels, config, on_epoch)
        after = ctx.work_dir / "qat.onnx"
        export_module(student, shapes, after, request.opset)
        ctx.learned_ranges = learned_onnx_ranges(student, onnx.load(str(after)), sample, ranges)
        scheme = "symmetric (TensorRT)" if symmetric else "asymmetric"
        report = compare(
            "qat",
            f"{epochs} epochs, weights int8 per channel, activations int8 per tensor {scheme}; "
            + _distill_setting(config),
            request.model,
            after,
            _measure_set(ctx),
            notes=[
                f"{len(ctx.learned_ranges)} of {len(ranges)} learned activation ranges matched to ONNX "
                "tensors and used for the artifact's quantization instead of calibration",
                *(
                    [f"trained in float as the artifact keeps them: {', '.join(sorted(keep_float))}"]
                    if keep_float
                    else []
                ),
                "the weights stay on their int8 grid: the artifact's weights are the ones trained with",
            ],
        )
        _record(ctx, report)
        ctx.torch_module = student
        use_fp32_model(ctx, after)


class LowRank:
    """Truncated SVD of fully-connected and 1x1-conv weights where it saves MACs."""

    name = "low-rank factorization"

    def run(self, ctx: ConversionContext) -> None:
        import onnx

        from edgefleet.converter.compression.lowrank import low_rank_factorize

        energy = ctx.need(ctx.request.low_rank, "the energy threshold")
        before = ctx.request.model
        convolutions = ctx.request.low_rank_conv
        factorized, decisions = low_rank_factorize(onnx.load(str(before)), energy, convolutions)
        applied = [d for d in decisions if d.applied]
        after = ctx.work_dir / "low_rank.onnx"
        onnx.save(factorized, str(after))
        notes = []
        if not decisions:
            kxk = ", KxK Conv" if convolutions else ""
            notes.append(
                f"no Gemm, MatMul with a constant 2-D weight, or 1x1 Conv{kxk} to factorize: model unchanged"
            )
        elif not applied:
            notes.append(f"no layer kept {energy:g} of its energy at a rank that saves MACs: model unchanged")
        report = compare(
            "low_rank",
            f"energy {energy:g}, {len(applied)} of {len(decisions)} layers factorized"
            + (" (SVD, Tucker-2 on KxK convolutions)" if convolutions else " (SVD)"),
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


def pruning_flags(request: ConversionRequest) -> list[str]:
    """The options that shape --prune which were given (other than their defaults)."""
    given = (
        ("--prune-criterion", request.prune_criterion != "l2"),
        ("--prune-global", request.prune_global),
        ("--prune-protect", bool(request.prune_protect)),
        ("--prune-steps", request.prune_steps != 1),
        ("--sparsity-reg", request.sparsity_reg is not None),
    )
    return [flag for flag, set_ in given if set_]


def check_steps(request: ConversionRequest, kind: SourceKind) -> list[Step]:
    """Cheap checks for the compression options, first in the plan (empty when none were asked for)."""
    asked = (request.prune, request.low_rank, request.magnitude_prune, request.train)
    flags = (
        request.sparsity_2_4
        or request.low_rank_conv
        or bool(request.distill_features)
        or request.qat_epochs is not None
    )
    wanted = any(v is not None for v in asked) or pruning_flags(request) or flags
    return [CheckCompressionOptions(kind)] if wanted else []


def data_steps(request: ConversionRequest) -> list[Step]:
    """Loading the recovery-training set, with the other data loads (before any heavy step)."""
    return [LoadTrainingData()] if request.train is not None else []


def compression_steps(request: ConversionRequest) -> list[Step]:
    """The compressing steps, in order (empty when none were asked for)."""
    steps: list[Step] = []
    if request.prune is not None:
        steps.append(PruneChannels())
    if request.sparsity_2_4:
        steps.append(Sparsify24())
    if request.low_rank is not None:
        steps.append(LowRank())
    if request.magnitude_prune is not None:
        steps.append(MagnitudePrune())
    if request.qat_epochs is not None:  # last: any later rewrite would move the weights off their grid
        steps.append(QuantizationAwareTraining())
    return steps


def artifact_check_steps(request: ConversionRequest) -> list[Step]:
    """Checks on the built artifact that a compression method asks for (empty when none)."""
    return [CheckSparsePattern()] if request.sparsity_2_4 else []
