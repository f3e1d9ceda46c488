"""Which ONNX nodes stay in float by rule in an INT8 artifact whose target runs float ops: the numerically
sensitive parts that one int8 scale per tensor breaks, whatever the calibration data says.

- head: a final Sigmoid/Softmax and every node after it up to the graph outputs, when nothing heavy follows
  (box decoding: YOLOv8's DFL Softmax -> tiny fixed Conv -> anchor Sub/Add -> Concat -> stride Mul, and the
  Concat that joins boxes in pixels with scores in [0, 1]; one scale over both crushes the scores to 0);
- mixed output: any Concat on the way to an output (nothing heavy after it) whose inputs' calibrated
  ranges differ by more than 16x (boxes next to raw logits), and what follows it;
- normalisation: the denominator of a normalisation written op by op (LayerNorm as ReduceMean, Sub, Pow,
  ReduceMean, Add eps, Sqrt, Div): a per-tensor scale over variances wipes out eps and small variances;
- shape math: float nodes that compute only on shapes and constants (Resize scales, anchor grids), where
  rounding to int8 moves coordinates.
Graph helpers shared with the per-layer error measurement (which ignores constant-only nodes) live here too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from edgefleet.converter.steps.onnx_to_keras import node_label

PeakReader = Callable[[list[str]], dict[str, float]]  # tensor names -> calibrated max |x|

HEAD_OPS = {"Sigmoid", "Softmax", "LogSoftmax"}
# Ops that may follow a head's activation without making it a hidden layer: no learned weights, cheap.
TAIL_OPS = {
    *HEAD_OPS,
    "Abs", "Add", "ArgMax", "Cast", "Ceil", "Clip", "Concat", "Div", "Equal", "Exp", "Expand", "Flatten",
    "Floor", "Gather", "GatherElements", "Greater", "HardSigmoid", "Identity", "Less", "Log", "Max", "Min",
    "Mul", "Neg", "NonMaxSuppression", "Pow", "ReduceMax", "ReduceMean", "ReduceSum", "Relu", "Reshape",
    "Round", "Shape", "Sign", "Slice", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Tile", "TopK",
    "Transpose", "Unsqueeze", "Where",
}  # fmt: skip
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# A fixed projection this small inside a head is decoding, not a layer (YOLOv8's DFL conv: 16 weights).
MAX_DECODE_WEIGHTS = 256
# Shape-only ops: their output does not carry the input's values.
SHAPE_OPS = {"Shape", "Size"}
NORM_DENOMINATOR_OPS = {"Sqrt", "Reciprocal", "Pow"}
# A Concat feeding an output whose inputs' calibrated peaks differ more than this (boxes in pixels next to
# scores or logits) loses the small ones to one shared int8 scale.
MIXED_RANGE_RATIO = 16.0


class Graph:
    """Producers, consumers and constants of one ONNX graph."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.model = model
        self.nodes = list(model.graph.node)
        self.inputs = {i.name for i in model.graph.input}
        self.constants = {
            i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name not in self.inputs
        }
        self.outputs = {o.name for o in model.graph.output}
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def value_dependent(self) -> set[str]:
        """Tensors whose values depend on the graph inputs' values (not only on their shapes)."""
        live = {name for name in self.inputs if name not in self.constants}
        for node in self.nodes:  # graph order is topological
            if node.op_type not in SHAPE_OPS and any(name in live for name in node.input):
                live.update(node.output)
        return live

    def forward_cone(self, node: Any) -> list[Any]:
        """`node` and every node downstream of it, in graph order."""
        reached, pending = {id(node)}, list(node.output)
        while pending:
            for consumer in self.consumers.get(pending.pop(), []):
                if id(consumer) not in reached:
                    reached.add(id(consumer))
                    pending.extend(consumer.output)
        return [n for n in self.nodes if id(n) in reached]

    def small_weights(self, node: Any) -> bool:
        weights = [self.constants[n] for n in node.input[1:] if n in self.constants]
        return bool(weights) and sum(w.size for w in weights) <= MAX_DECODE_WEIGHTS

    def reaches_output(self, nodes: Iterable[Any]) -> bool:
        return any(self.outputs.intersection(node.output) for node in nodes)


# How a node is named in reports, ctx.float_layers and quantize_static's nodes_to_exclude: the translator's
# rule, which also traces TFLite ops back to their nodes.
label = node_label


def _heads(graph: Graph) -> dict[str, str]:
    kept: dict[str, str] = {}
    for node in graph.nodes:
        if node.op_type not in HEAD_OPS or label(node) in kept:
            continue
        cone = graph.forward_cone(node)
        if _is_tail(graph, cone) and graph.reaches_output(cone):
            kept |= {label(n): f"head: {node.op_type} '{label(node)}' and what follows it" for n in cone}
    return kept


def _is_tail(graph: Graph, nodes: list[Any]) -> bool:
    return all(n.op_type in TAIL_OPS or (n.op_type in WEIGHTED_OPS and graph.small_weights(n)) for n in nodes)


def _mixed_outputs(
    graph: Graph, peaks: PeakReader | None, kept: dict[str, str], live: set[str], floats: set[str]
) -> dict[str, str]:
    """Concats on the way to a graph output (nothing heavy after them) joining tensors whose calibrated
    peaks differ by more than MIXED_RANGE_RATIO: the Concat and what follows it stay float, so each input
    keeps its own scale."""
    candidates = [
        node
        for node in graph.nodes
        if node.op_type == "Concat"
        and label(node) not in kept
        and live.intersection(node.output)  # computed from the inputs' values, not shape arithmetic
        and (not floats or floats.intersection(node.output))
        and graph.reaches_output(cone := graph.forward_cone(node))
        and _is_tail(graph, cone)
    ]
    if peaks is None or not candidates:
        return {}
    names = [n for node in candidates for n in node.input if n not in graph.constants]
    found = peaks(list(dict.fromkeys(names)))
    mixed: dict[str, str] = {}
    for node in candidates:
        values = [found[n] for n in node.input if n in found and found[n] > 0]
        if len(values) > 1 and max(values) / min(values) > MIXED_RANGE_RATIO:
            why = f"mixed output: Concat '{label(node)}' joins ranges {min(values):.3g} to {max(values):.3g}"
            mixed |= {label(n): why for n in graph.forward_cone(node)}
    return mixed


def _normalisations(graph: Graph, live: set[str]) -> dict[str, str]:
    """The denominator chain of each op-by-op normalisation: from its Sqrt/Reciprocal/Pow back through the
    nodes that feed only it (the variance: Pow, ReduceMean, Add eps), plus the Div it feeds."""
    kept: dict[str, str] = {}
    for node in graph.nodes:
        if node.op_type not in NORM_DENOMINATOR_OPS or not live.intersection(node.input[:1]):
            continue
        divides = [c for c in graph.consumers.get(node.output[0], []) if c.op_type in ("Div", "Mul")]
        if node.op_type == "Pow" and not _is_root(graph, node):
            continue  # a square (the variance's x**2) is reached from its Sqrt below
        if not divides and node.op_type != "Reciprocal":
            continue
        why = f"normalisation: {node.op_type} '{label(node)}'"
        chain, pending = [node], [node.input[0]]
        while pending:
            producer = graph.producer.get(pending.pop())
            if producer is None or not live.intersection(producer.output):
                continue
            readers = graph.consumers.get(producer.output[0], [])
            if any(id(r) not in {id(c) for c in chain} for r in readers):
                continue  # shared with the numerator (x - mean) or the rest of the layer
            chain.append(producer)
            pending.extend(n for n in producer.input if n in live)
        kept |= {label(n): why for n in [*chain, *divides]}
    return kept


def _is_root(graph: Graph, node: Any) -> bool:
    """A Pow taking a square root (exponent 0.5 or -0.5): a normalisation's denominator itself."""
    exponent = graph.constants.get(node.input[1]) if len(node.input) > 1 else None
    return exponent is not None and exponent.size == 1 and abs(abs(float(exponent.ravel()[0])) - 0.5) < 1e-6


def _shape_math(graph: Graph, live: set[str], float_tensors: set[str]) -> dict[str, str]:
    kept: dict[str, str] = {}
    for node in graph.nodes:
        if (
            node.op_type != "Constant"
            and not live.intersection(node.output)
            and float_tensors.intersection(node.output)
            and any(n in graph.producer for n in node.input)  # computed at run time, not a folded constant
        ):
            kept[label(node)] = "shape math: float values computed from shapes and constants"
    return kept


def _float_tensors(model: Any) -> set[str]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # without types, no node is taken for shape math
        return set()
    return {
        v.name
        for v in [*inferred.graph.value_info, *inferred.graph.output]
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }


def float_by_rule(model: Any, peaks: PeakReader | None = None) -> dict[str, str]:
    """ONNX node label -> why it stays in float, in graph order (see the module text for the rules).
    `peaks` reads calibrated max |x| of tensors (the mixed-output rule needs it; None: rule skipped)."""
    graph = Graph(model)
    live = graph.value_dependent()
    floats = _float_tensors(model)
    found = {**_shape_math(graph, live, floats), **_normalisations(graph, live), **_heads(graph)}
    found |= _mixed_outputs(graph, peaks, found, live, floats)
    # Integer nodes in a tail (Shape, Gather of a dimension) are never quantized: not worth naming.
    return {
        label(n): found[label(n)]
        for n in graph.nodes
        if label(n) in found and (not floats or floats.intersection(n.output))
    }


def describe_rules(kept: dict[str, str], shown: int = 24) -> str:
    """One line for the summary: the kept nodes grouped by rule."""
    groups: dict[str, list[str]] = {}
    for name, why in kept.items():
        groups.setdefault(why.split(":")[0], []).append(name)
    parts = []
    for rule, names in groups.items():
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        parts.append(f"{rule} ({len(names)}): {', '.join(names[:shown])}{more}")
    return "; ".join(parts)
