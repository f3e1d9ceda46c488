"""TensorRT readiness of an ONNX artifact: the explicit-quantization rules TensorRT's Q/DQ parser enforces
(opset >= 13; int8 Q/DQ with zero point 0; per-tensor activation scales; weights per output channel; float
bias, not an int32 one behind a DequantizeLinear), each violation named by node, and the ops TensorRT's ONNX
parser does not build (they run on the profile's next execution provider instead).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.contract.profiles import Precision
from edgefleet.contract.target_checks import TargetChecks, TensorRtReport, TensorRtViolation, UnsupportedOp
from edgefleet.converter.context import ConversionContext
from edgefleet.converter.tensorrt_ops import MIN_OPSET, OP_TABLE_SOURCE, TENSORRT_OPS

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
BIAS_INPUT = 2


def _label(node: Any) -> str:
    return str(node.name or node.output[0])


def _weight_axis(node: Any, weight_rank: int) -> int:
    """The output-channel axis of a layer's weight, the axis TensorRT quantizes weights along."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "ConvTranspose":
        return 1  # (C_in, C_out / group, kH, kW)
    if node.op_type == "Gemm":
        return 0 if "transB" in attrs and attrs["transB"].i else 1
    if node.op_type == "MatMul":
        return weight_rank - 1
    return 0  # Conv: (C_out, C_in / group, kH, kW)


class _QdqRules:
    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.model = model
        self.constants: dict[str, np.ndarray] = {
            i.name: numpy_helper.to_array(i) for i in model.graph.initializer
        }
        self.producers = {out: node for node in model.graph.node for out in node.output}
        self.violations: list[TensorRtViolation] = []

    def flag(self, rule: Any, node: Any, detail: str) -> None:
        self.violations.append(TensorRtViolation(rule=rule, node=_label(node), detail=detail))

    def check_qdq_node(self, node: Any) -> None:
        zero_point = node.input[2] if len(node.input) > 2 else ""
        source = self.constants.get(node.input[0])
        if not zero_point:
            # Without a zero point, QuantizeLinear outputs uint8; a DequantizeLinear's type is its input's
            # (an int32 one is a quantized bias: the bias rule reports it).
            is_dq = node.op_type == "DequantizeLinear" and source is not None
            quantized = source.dtype.name if is_dq and source is not None else "uint8"
            if quantized not in ("int8", "int32"):
                self.flag("signed-int8", node, f"no zero point: the type is {quantized}; TensorRT needs int8")
        elif zero_point not in self.constants:
            self.flag("zero-point", node, f"zero point '{zero_point}' is not a constant")
        else:
            value = self.constants[zero_point]
            if value.dtype != np.int8:
                self.flag(
                    "signed-int8",
                    node,
                    f"zero point '{zero_point}' is {value.dtype}; TensorRT takes int8 only",
                )
            if np.any(value != 0):
                shown = np.unique(value)[:4].tolist()
                self.flag(
                    "zero-point", node, f"zero point '{zero_point}' is {shown}, not 0 (TensorRT is symmetric)"
                )
        carries_weights = node.op_type == "DequantizeLinear" and source is not None
        scale = self.constants.get(node.input[1])
        if not carries_weights and scale is not None and scale.size != 1:
            self.flag(
                "per-tensor-activation",
                node,
                f"activation '{node.input[0]}' has {scale.size} scales; TensorRT quantizes activations "
                "per tensor",
            )

    def _quantized_at_run_time(self, weight_dq: Any) -> bool:
        """A weight DequantizeLinear fed by a QuantizeLinear of a constant tensor: the quantizer took the
        weight (a Constant node's output) for an activation, so the artifact quantizes it on every run."""
        if (
            weight_dq is None
            or weight_dq.op_type != "DequantizeLinear"
            or weight_dq.input[0] in self.constants
        ):
            return False
        quantize = self.producers.get(weight_dq.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear":
            return False
        source = self.producers.get(quantize.input[0])
        return quantize.input[0] in self.constants or (source is not None and source.op_type == "Constant")

    def check_layer(self, node: Any) -> None:
        """A Conv/ConvTranspose/Gemm/MatMul: weights per output channel, bias left in float."""
        weight_dq = self.producers.get(node.input[1]) if len(node.input) > 1 else None
        if self._quantized_at_run_time(weight_dq):
            self.flag(
                "per-channel-weights",
                weight_dq,
                f"weights of '{_label(node)}' are quantized at run time with one scale (they are not an "
                "initializer: e.g. a Constant node); TensorRT wants int8 weights stored per output channel",
            )
        elif (
            weight_dq is not None
            and weight_dq.op_type == "DequantizeLinear"
            and weight_dq.input[0] in self.constants
        ):
            weight = self.constants[weight_dq.input[0]]
            scale = self.constants.get(weight_dq.input[1])
            want = _weight_axis(node, weight.ndim)
            attrs = {a.name: a.i for a in weight_dq.attribute}
            axis = attrs.get("axis", 1) % max(weight.ndim, 1)
            channels = weight.shape[want] if weight.ndim > want else 1
            if scale is not None and scale.size == 1 and channels > 1:
                self.flag(
                    "per-channel-weights",
                    weight_dq,
                    f"weights of '{_label(node)}' are quantized per tensor; the TensorRT form wants one "
                    f"scale per output channel (axis {want}, {channels} channels)",
                )
            elif scale is not None and scale.size > 1 and axis != want:
                self.flag(
                    "per-channel-weights",
                    weight_dq,
                    f"weights of '{_label(node)}' are quantized along axis {axis}; TensorRT needs the "
                    f"output-channel axis {want}",
                )
        if node.op_type != "MatMul" and len(node.input) > BIAS_INPUT and node.input[BIAS_INPUT]:
            bias_producer = self.producers.get(node.input[BIAS_INPUT])
            if bias_producer is not None and bias_producer.op_type == "DequantizeLinear":
                self.flag(
                    "bias",
                    bias_producer,
                    f"bias of '{_label(node)}' is quantized (int32 behind DequantizeLinear); TensorRT "
                    "wants a float bias",
                )


def check_tensorrt_model(model: Any, check_qdq: bool) -> TargetChecks:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    rules = _QdqRules(model)
    if check_qdq:
        if opset < MIN_OPSET:
            rules.violations.append(
                TensorRtViolation(
                    rule="opset",
                    node="(model)",
                    detail=f"opset {opset}; TensorRT's explicit quantization needs opset {MIN_OPSET}+",
                )
            )
        for node in model.graph.node:
            if node.op_type in QDQ_OPS:
                rules.check_qdq_node(node)
            elif node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
                rules.check_layer(node)
    unsupported = [
        UnsupportedOp(
            op=node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}",
            layer=_label(node),
            reason="not in TensorRT's ONNX op list; it runs on the next execution provider (CUDA, else CPU), "
            "splitting the TensorRT engine",
            consequence="runs outside TensorRT",
        )
        for node in model.graph.node
        if node.domain not in ("", "ai.onnx") or node.op_type not in TENSORRT_OPS
    ]
    ready = not rules.violations and not unsupported
    report = TensorRtReport(
        op_table=OP_TABLE_SOURCE, opset=opset, checks_qdq=check_qdq, ready=ready, violations=rules.violations
    )
    if ready:
        summary = f"all {len(model.graph.node)} ops build into a TensorRT engine"
        if check_qdq:
            summary += (
                "; Q/DQ ready for explicit quantization (int8, zero point 0, per-channel weights, "
                f"float bias, opset {opset})"
            )
    else:
        parts = []
        if rules.violations:
            first = rules.violations[0]
            parts.append(
                f"{len(rules.violations)} TensorRT Q/DQ rule violation(s), first at node '{first.node}' "
                f"({first.rule}: {first.detail})"
            )
        if unsupported:
            ops = ", ".join(f"{u.op} ('{u.layer}')" for u in unsupported[:5])
            parts.append(f"{len(unsupported)} op(s) run outside TensorRT: {ops}")
        summary = "; ".join(parts)
    return TargetChecks(
        target="tensorrt", passed=ready, summary=summary, unsupported_ops=unsupported, tensorrt=report
    )


class TensorRtCheck:
    """Check the ONNX artifact for a TensorRT target; violations and fallbacks become warnings in the summary
    (onnxruntime still runs the model, partly outside TensorRT)."""

    name = "check tensorrt readiness"

    def run(self, ctx: ConversionContext) -> None:
        import onnx

        model = onnx.load(str(ctx.need(ctx.artifact_path, "the artifact")))
        checks = check_tensorrt_model(model, check_qdq=ctx.profile.artifact.precision is Precision.INT8)
        ctx.target_checks = checks
        if not checks.passed:
            ctx.notes.append(f"WARNING: tensorrt: {checks.summary}")
