"""Static post-training INT8 quantization of the ONNX model into QDQ form with onnxruntime.quantization."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from edgefleet.converter.context import ConversionContext
from edgefleet.converter.shared_work import model_key
from edgefleet.converter.steps.calibration import OnnxCalibrationReader
from edgefleet.converter.steps.calibration_ranges import (
    onnx_range_overrides,
    onnxruntime_calibration,
    tensor_peaks,
)
from edgefleet.converter.steps.float_rules import describe_rules, float_by_rule
from edgefleet.converter.steps.quantization import QuantizationChoice, choice_in_force

MIN_QDQ_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) need opset 13
CALIBRATION_BATCH = 32


def ensure_opset(model, minimum: int):
    """The model at `minimum` opset or newer (onnx's version converter for older exports)."""
    import onnx
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= minimum:
        return model
    converted = version_converter.convert_version(model, minimum)
    onnx.checker.check_model(converted)
    return converted


def rule_float_nodes(ctx: ConversionContext) -> dict[str, str]:
    """Nodes kept in float by rule (float_rules: heads, normalisations, shape math) where the target runs
    float ops; {} for targets that need every op in int8."""
    if not ctx.profile.artifact.allow_float_fallback:
        return {}
    model = ctx.need(ctx.model, "the source model")
    calib = ctx.calib

    def peaks(names: list[str]) -> dict[str, float]:
        return tensor_peaks(model, calib, names) if calib is not None else {}

    # Mixed precision re-quantizes many times, alternatives and other profiles share the model: decide once.
    return dict(ctx.shared.once(f"float-rules:{model_key(ctx)}", lambda: float_by_rule(model, peaks)))


def note_rule_floats(ctx: ConversionContext, by_rule: dict[str, str]) -> None:
    """Name the nodes kept in float by rule in the summary, once (mixed precision re-runs quantization)."""
    note = f"int8: kept {len(by_rule)} node(s) in float by rule: {describe_rules(by_rule)}"
    if by_rule and note not in ctx.notes:
        ctx.notes.append(note)


class QuantizeOnnx:
    """QDQ INT8, per-channel weights, calibrated on the calibration set with the choice's method; its float
    layers (mixed precision) and, where the target runs float ops, the numerically sensitive nodes
    float_rules names are left unquantized.

    Flavor 'ort': asymmetric uint8 activations (fastest in onnxruntime on CPUs).
    Flavor 'tensorrt': symmetric int8 activations and weights (zero point 0), float bias: the form
    TensorRT's explicit-quantization rules accept.
    """

    name = "quantize onnx (int8 qdq)"

    def __init__(self, flavor: Literal["ort", "tensorrt"]) -> None:
        self.flavor = flavor

    def run(self, ctx: ConversionContext) -> None:
        ctx.artifact_path = self.quantize(ctx, choice_in_force(ctx))

    def quantize(self, ctx: ConversionContext, choice: QuantizationChoice) -> Path:
        import onnx
        import onnxruntime as ort
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        # Sessions on exporter-made models warn about every Clip bound they fold away (dozens of lines for a
        # MobileNet); real problems still arrive as exceptions.
        ort.set_default_logger_severity(3)

        model = ensure_opset(ctx.need(ctx.model, "the source model"), MIN_QDQ_OPSET)
        source = ctx.work_dir / "source.onnx"
        onnx.save(model, str(source))
        out = ctx.work_dir / "model.onnx"
        if self.flavor == "tensorrt":
            activation_type = QuantType.QInt8
            extra: dict[str, Any] = {
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
            }
        else:
            activation_type = QuantType.QUInt8
            extra = {}
        calib = ctx.need(ctx.calib, "calibration data")
        by_rule = rule_float_nodes(ctx)
        overrides = onnx_range_overrides(ctx, choice.calib_method)
        if overrides:
            extra = {**extra, "TensorQuantOverrides": overrides}
        # quantize_static logs a generic "consider pre-processing" warning on the root logger; pre-processing
        # changed nothing measurable for exporter-folded models (toolchain notes), so keep the CLI quiet.
        logging.disable(logging.WARNING)
        try:
            quantize_static(
                str(source),
                str(out),
                OnnxCalibrationReader(calib, CALIBRATION_BATCH),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=activation_type,
                weight_type=QuantType.QInt8,
                calibrate_method=onnxruntime_calibration(choice.calib_method),
                extra_options=extra,
                nodes_to_exclude=list(dict.fromkeys([*by_rule, *choice.float_layers])),
            )
        finally:
            logging.disable(logging.NOTSET)
        note_rule_floats(ctx, by_rule)
        drop_unused_initializers(out)
        onnx.checker.check_model(str(out))
        return out


def drop_unused_initializers(path) -> None:
    """quantize_static folds Clip/Relu into the producing node but leaves their min/max constants behind;
    onnxruntime then warns about each one whenever the model is loaded (on the device too)."""
    import onnx

    model = onnx.load(str(path))
    used = {name for node in model.graph.node for name in node.input}
    used |= {output.name for output in model.graph.output}
    unused = [init for init in model.graph.initializer if init.name not in used]
    if unused:
        for init in unused:
            model.graph.initializer.remove(init)
        onnx.save(model, str(path))
