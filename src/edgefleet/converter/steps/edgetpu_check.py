"""Static Edge TPU compatibility check of a full-INT8 .tflite: every op and its version against the Edge TPU
op list (converter/edgetpu_ops.py), tensor types, static shapes, the 3-innermost-dimensions rule, one
subgraph, and which ops would run on the CPU. A Coral profile refuses a model with any CPU op: convert
exits non-zero and the report is written next to where the bundle would have gone.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

from edgefleet.contract.target_checks import (
    EdgeTpuCompilation,
    EdgeTpuOp,
    EdgeTpuReport,
    TargetChecks,
    UnsupportedOp,
)
from edgefleet.converter.context import ConversionContext
from edgefleet.converter.edgetpu_ops import (
    COMPILER_VERSION,
    EDGETPU_OPS,
    MAX_INNER_DIMS,
    NO_FUSED_ACTIVATION,
    OP_TABLE_SOURCE,
    SOFTMAX_MAX_ELEMENTS,
)
from edgefleet.converter.errors import TargetRefusedError
from edgefleet.converter.steps.package import bundle_file_name
from edgefleet.converter.tflite_graph import (
    TfliteGraph,
    TfliteOp,
    TfliteTensor,
    fused_activation,
    read_tflite,
)

EIGHT_BIT = ("int8", "uint8")


def short_name(tensor_name: str) -> str:
    """TensorFlow joins the names of fused ops with ';': the first one names the layer well enough."""
    return tensor_name.split(";")[0]


def _shape(dims: tuple[int, ...]) -> str:
    return "(" + ",".join("?" if d < 0 else str(d) for d in dims) + ")"


def _tensor_problems(tensor: TfliteTensor, role: str, int32_allowed: bool) -> list[str]:
    where = f"{role} '{short_name(tensor.name)}'"
    if tensor.constant:
        if tensor.dtype in EIGHT_BIT or (tensor.dtype == "int32" and int32_allowed):
            return []
        return [f"constant {where} is {tensor.dtype} (8-bit weights; int32 only for bias and shape operands)"]
    problems = []
    if tensor.dtype not in EIGHT_BIT:
        problems.append(f"{where} is {tensor.dtype}; the Edge TPU computes on int8/uint8 tensors only")
    if any(d < 0 for d in tensor.signature):
        problems.append(f"{where} has a dynamic shape {_shape(tensor.signature)}; sizes must be static")
    outer = tensor.shape[:-MAX_INNER_DIMS]
    if any(d > 1 for d in outer):
        problems.append(
            f"{where} has shape {_shape(tensor.shape)}: only the {MAX_INNER_DIMS} innermost dimensions may "
            "be larger than 1"
        )
    return problems


def _option_problems(graph: TfliteGraph, op: TfliteOp) -> list[str]:
    """The known limitations of coral.ai's table that can be checked statically."""
    problems = []
    activation = fused_activation(op)
    if op.name in NO_FUSED_ACTIVATION and activation not in (None, "NONE"):
        problems.append(f"fused activation {activation} (the Edge TPU maps {op.name} only without one)")
    if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        h, w = getattr(op.options, "dilationHFactor", 1), getattr(op.options, "dilationWFactor", 1)
        if h != w:
            problems.append(f"dilation {h}x{w} differs in x and y")
    if op.name == "FULLY_CONNECTED":
        if getattr(op.options, "weightsFormat", 0) != 0:
            problems.append("weights are not in the default format")
        out = graph.tensors[op.outputs[0]].shape
        if any(d > 1 for d in out[:-1]):
            problems.append(f"output shape {_shape(out)} is not one-dimensional")
    if op.name == "SOFTMAX":
        shape = graph.tensors[op.inputs[0]].shape
        size = 1
        for d in shape:
            size *= d
        if sum(d > 1 for d in shape) > 1 or size > SOFTMAX_MAX_ELEMENTS:
            problems.append(
                f"input shape {_shape(shape)}: only a 1-D input of at most {SOFTMAX_MAX_ELEMENTS} elements"
            )
    return problems


def op_problems(graph: TfliteGraph, op: TfliteOp) -> list[str]:
    """Why `op` cannot run on the Edge TPU (empty: it can, judged on its own)."""
    rule = EDGETPU_OPS.get(op.name)
    if rule is None:
        return [f"{op.name} is not in the Edge TPU's supported-op list"]
    problems = []
    if op.version > rule.max_version:
        problems.append(
            f"version {op.version} is newer than edgetpu_compiler {COMPILER_VERSION} accepts "
            f"(up to {rule.max_version})"
        )
    for position, index in enumerate(op.inputs):
        if index >= 0:
            problems += _tensor_problems(
                graph.tensors[index], f"input {position}", position in rule.int32_operands
            )
    for index in op.outputs:
        problems += _tensor_problems(graph.tensors[index], "output", False)
    return problems + _option_problems(graph, op)


def check_edgetpu_graph(graph: TfliteGraph, io_dtype: str, layer_of: Any = None) -> EdgeTpuReport:
    """The static report; `layer_of(op) -> str` names an op's layer (default: its output tensor)."""
    name_layer = layer_of or (lambda op: short_name(graph.layer(op)))
    model_problems = []
    if graph.subgraphs != 1:
        model_problems.append(f"{graph.subgraphs} subgraphs: the Edge TPU compiler maps only one")
    for role, indices in (("input", graph.inputs), ("output", graph.outputs)):
        for index in indices:
            tensor = graph.tensors[index]
            if tensor.dtype != io_dtype:
                model_problems.append(
                    f"model {role} '{tensor.name}' is {tensor.dtype}; the profile wants {io_dtype}"
                )
    ops: list[EdgeTpuOp] = []
    first_cpu: int | None = None
    for op in graph.ops:
        problems = op_problems(graph, op)
        if problems and first_cpu is None:
            first_cpu = op.index
        ops.append(
            EdgeTpuOp(
                index=op.index,
                op=op.name,
                version=op.version,
                layer=name_layer(op),
                problems=problems,
                runs_on="cpu" if first_cpu is not None else "edgetpu",
            )
        )
    return EdgeTpuReport(
        op_table=OP_TABLE_SOURCE,
        compatible=first_cpu is None and not model_problems,
        io_dtype=io_dtype,
        subgraphs=graph.subgraphs,
        model_problems=model_problems,
        ops=ops,
        first_cpu_op=first_cpu,
        compilation=EdgeTpuCompilation(compiled=False, detail="not compiled for Edge TPU: not attempted yet"),
    )


def edgetpu_checks(report: EdgeTpuReport) -> TargetChecks:
    """The report as TargetChecks: the unsupported ops listed first, one summary line."""
    unsupported = [
        UnsupportedOp(
            op=op.op, version=op.version, layer=op.layer, reason="; ".join(op.problems), consequence="refused"
        )
        for op in report.ops
        if op.problems
    ]
    if report.compatible:
        summary = f"all {len(report.ops)} ops map to the Edge TPU (static check)"
    elif report.first_cpu_op is not None:
        first = report.ops[report.first_cpu_op]
        after = len(report.ops) - first.index - 1
        summary = (
            f"{len(unsupported)} op(s) cannot run on the Edge TPU; the first, {first.op} v{first.version} "
            f"at layer '{first.layer}' ({first.problems[0]}), and the {after} op(s) after it would run on "
            "the CPU"
        )
    else:
        summary = "; ".join(report.model_problems)
    return TargetChecks(
        target="edgetpu",
        passed=report.compatible,
        summary=summary,
        unsupported_ops=unsupported,
        edgetpu=report,
    )


def onnx_layer_namer(graph: TfliteGraph, translation: Any) -> Any:
    """Name ops by the ONNX nodes they came from, when the Keras translation recorded them."""
    layer_nodes = getattr(translation, "layer_nodes", None) or {}
    try:
        from edgefleet.converter.steps.onnx_to_keras import layer_names_in
    except ImportError:  # older translator: tensor names only
        return None
    if not layer_nodes:
        return None

    def name(op: TfliteOp) -> str:
        tensor = graph.layer(op)
        # A fused op names its layers outermost first (Relu;BiasAdd;convolution): list them in graph order.
        layers = sorted(
            set(layer_names_in(tensor)), key=lambda layer: int(re.sub(r"\D.*", "", layer[1:]) or 0)
        )
        nodes = list(dict.fromkeys(node for layer in layers for node in layer_nodes.get(layer, [])))
        return f"{' + '.join(nodes)} ({short_name(tensor)})" if nodes else short_name(tensor)

    return name


def check_report_path(ctx: ConversionContext) -> Path:
    request = ctx.request
    bundle = bundle_file_name(request.name, request.version, ctx.profile.name)
    return request.out / bundle.replace(".efb", ".target-checks.json")


def refuse(ctx: ConversionContext, checks: TargetChecks) -> NoReturn:
    """Write the report (nothing is lost) and stop the conversion with the reason."""
    ctx.target_checks = checks
    path = check_report_path(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(checks.model_dump_json(indent=2))
    raise TargetRefusedError(
        f"profile '{ctx.profile.name}' refuses the model: {checks.summary}; the Edge TPU runs only what maps "
        f"completely - change or remove those layers (report: {path})",
        report_path=path,
    )


class EdgeTpuCheck:
    """Check the full-INT8 TFLite against the Edge TPU's rules; refuse anything that would fall back."""

    name = "check edge tpu compatibility"

    def run(self, ctx: ConversionContext) -> None:
        graph = read_tflite(ctx.need(ctx.artifact_path, "the artifact"))
        report = check_edgetpu_graph(
            graph, ctx.profile.artifact.io_dtype, onnx_layer_namer(graph, ctx.keras_model)
        )
        checks = edgetpu_checks(report)
        if not checks.passed:
            report.compilation.detail = "not compiled for Edge TPU: the static check failed"
            refuse(ctx, checks)
        ctx.target_checks = checks
