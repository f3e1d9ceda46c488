"""Constant folding right after loading: Constant nodes become initializers and nodes computing only on
constants are evaluated once (onnxruntime), so weights reach the quantizers as initializers.

Why: exporters such as Paddle's store weights as Constant nodes (or as a Constant followed by a Transpose or
Reshape); onnxruntime's quantizer then sees the weight as an activation, quantizes it per tensor at run time
and keeps the fp32 copy too, so the "int8" file is larger than the fp32 one and loses accuracy. Names of the
nodes that remain are kept (reports and mixed precision refer to them); a folded node's output keeps its
tensor name, now as an initializer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefleet.converter.context import ConversionContext

# Ops whose value differs run to run, or that need more than their inputs: never folded.
_NOT_FOLDABLE = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
    "SequenceConstruct",
    "SequenceEmpty",
    "QuantizeLinear",  # a QDQ source model keeps its quantization as written
    "DequantizeLinear",
}
# A folded tensor may be larger than what it was computed from (Expand, Tile, ConstantOfShape): past this
# growth the file would grow, so the node stays.
MAX_GROWTH_BYTES = 1 << 20
_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


@dataclass
class FoldResult:
    model: Any  # onnx.ModelProto
    constants: int = 0  # Constant nodes turned into initializers
    folded: int = 0  # other nodes evaluated once
    kept_large: list[str] = field(default_factory=list)  # foldable nodes left because their output is big
    weights: int = 0  # folded tensors that are weights of Conv/ConvTranspose/Gemm/MatMul nodes


def _subgraph_inputs(graph: Any) -> set[str]:
    """Names read by the nodes of `graph`'s subgraphs (If/Loop bodies read outer-scope tensors)."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names.update(n for inner in sub.node for n in inner.input)
                names |= _subgraph_inputs(sub)
    return names


def _has_subgraph(node: Any) -> bool:
    return any(attr.HasField("g") or len(attr.graphs) for attr in node.attribute)


def _evaluate(model: Any, nodes: list[Any], wanted: list[str], values: dict[str, Any]) -> dict[str, Any]:
    """The `wanted` outputs of `nodes` (in graph order) computed from the initializers `values`."""
    import onnx
    import onnxruntime as ort

    needed = {n for node in nodes for n in node.input if n} - {o for node in nodes for o in node.output}
    graph = onnx.helper.make_graph(
        nodes,
        "fold",
        [],
        [onnx.ValueInfoProto(name=name) for name in wanted],
        [values[name] for name in sorted(needed)],
    )
    folded = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    folded.ir_version = model.ir_version
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # onnxruntime's own optimizer could rewrite what we evaluate; evaluate the nodes exactly as written.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(folded.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip(wanted, session.run(wanted, {}), strict=True))


def _evaluate_all(model: Any, nodes: list[Any], values: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """(the nodes evaluated, their outputs): all at once, else one by one leaving out the nodes onnxruntime
    cannot evaluate (e.g. ops on sequences) and those depending on them."""
    from onnx import numpy_helper

    try:
        return nodes, _evaluate(model, nodes, [o for node in nodes for o in node.output if o], values)
    except Exception:  # folding is an optimisation: what cannot be folded stays a node
        pass
    known = dict(values)
    evaluated, computed = [], {}
    for node in nodes:
        if not all(not name or name in known for name in node.input):
            continue
        try:
            outputs = _evaluate(model, [node], [o for o in node.output if o], known)
        except Exception:  # left as a node
            continue
        evaluated.append(node)
        computed.update(outputs)
        known.update({name: numpy_helper.from_array(np.asarray(v), name) for name, v in outputs.items()})
    return evaluated, computed


def fold_constants(model: Any) -> FoldResult:
    """`model` with Constant nodes as initializers and constant-only nodes evaluated (a new ModelProto)."""
    import onnx
    from onnx import numpy_helper

    result = FoldResult(model=onnx.ModelProto())
    result.model.CopyFrom(model)
    graph = result.model.graph
    # An initializer that is also a graph input is only a default the caller may override: not constant.
    overridable = {i.name for i in graph.input}
    values = {i.name: i for i in graph.initializer if i.name not in overridable}
    sizes = {name: numpy_helper.to_array(t).nbytes for name, t in values.items()}
    outputs = {o.name for o in graph.output}
    foldable: list[Any] = []
    constant = set(values)
    for node in graph.node:
        if (
            node.domain in ("", "ai.onnx")
            and node.op_type not in _NOT_FOLDABLE
            and not _has_subgraph(node)
            and all(not name or name in constant for name in node.input)
            and not outputs.intersection(node.output)  # a graph output stays produced by a node
        ):
            foldable.append(node)
            constant.update(node.output)
    if not foldable:
        return result
    foldable, computed = _evaluate_all(result.model, foldable, values)
    folded_ids = {id(node) for node in foldable}
    sizes.update({name: value.nbytes for name, value in computed.items()})
    # A node whose value would be much larger than its inputs (Expand, Tile, ConstantOfShape) stays a node
    # (a Constant's value is in the file already).
    kept = [
        node
        for node in foldable
        if node.op_type != "Constant"
        and any(
            computed[o].nbytes > sum(sizes.get(i, 0) for i in node.input) + MAX_GROWTH_BYTES
            for o in node.output
            if o
        )
    ]
    for node in kept:
        folded_ids.discard(id(node))
    sub_reads = _subgraph_inputs(graph) | outputs
    for node in reversed(kept):  # a large value whose readers were all folded is not needed at all
        readers = [c for c in graph.node if id(c) not in folded_ids and set(c.input) & set(node.output)]
        if not readers and not sub_reads.intersection(node.output):
            folded_ids.add(id(node))
            kept.remove(node)
    result.kept_large = [node.name or node.output[0] for node in kept]
    nodes = [node for node in graph.node if id(node) not in folded_ids]
    read = {n for node in nodes for n in node.input} | _subgraph_inputs(graph) | outputs
    kept_outputs = {o for node in kept for o in node.output}
    new_inits = [
        numpy_helper.from_array(np.asarray(computed[o]), o)
        for node in foldable
        if id(node) in folded_ids
        for o in node.output
        if o in read and o not in kept_outputs
    ]
    result.constants = sum(1 for node in foldable if id(node) in folded_ids and node.op_type == "Constant")
    result.folded = len(folded_ids) - result.constants
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
    graph.initializer.extend(new_inits)
    unused = [i for i in graph.initializer if i.name not in read and i.name not in overridable]
    for init in unused:  # e.g. a weight whose only reader was the folded Transpose
        graph.initializer.remove(init)
    new_names = {i.name for i in new_inits}
    result.weights = sum(
        1 for node in graph.node if node.op_type in _WEIGHTED for name in node.input[1:] if name in new_names
    )
    for value in [v for v in graph.value_info if v.name in new_names or v.name not in read]:
        graph.value_info.remove(value)  # initializers carry their own type and shape
    return result


class FoldConstants:
    """Turn Constant nodes into initializers and evaluate constant-only nodes once (see the module text)."""

    name = "fold constants"

    def run(self, ctx: ConversionContext) -> None:
        folded = fold_constants(ctx.need(ctx.model, "the source model"))
        ctx.model = folded.model
        if folded.weights:  # what changes the artifact (an exporter's Clip bounds as Constants do not)
            ctx.notes.append(
                f"{folded.weights} weight/bias tensor(s) were stored as Constant nodes; folded into "
                f"initializers ({folded.constants} Constant node(s), {folded.folded} constant-only node(s)) "
                "so they are stored once and, for INT8, quantized per channel at conversion, not at run time"
            )
