"""Low-rank factorization of an fp32 ONNX graph: the weight matrix W of a fully-connected layer (Gemm, or
MatMul with a constant 2-D weight) or of a 1x1 convolution is replaced by two thinner factors from its
truncated SVD. The rank keeps the requested share of W's energy (sum of squared singular values); a layer
is factorized only when the two factors cost fewer MACs than W, by at least MIN_SAVING of W's MACs:
r * (in + out) <= (1 - MIN_SAVING) * in * out. A smaller saving would not pay for the accuracy it costs and
the extra node it adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_SAVING = 0.1


@dataclass(frozen=True)
class LayerDecision:
    node: str
    op: str
    fan_in: int
    fan_out: int
    rank: int  # smallest rank keeping the energy; == min(fan_in, fan_out) when nothing can be dropped
    applied: bool

    @property
    def macs_before(self) -> int:  # per output position
        return self.fan_in * self.fan_out

    @property
    def macs_after(self) -> int:
        return self.rank * (self.fan_in + self.fan_out) if self.applied else self.macs_before

    def describe(self) -> str:
        shape = f"{self.fan_in}x{self.fan_out}"
        if self.applied:
            return (
                f"{self.op} '{self.node}' {shape}: rank {self.rank}, MACs per position "
                f"{self.macs_before} -> {self.macs_after}"
            )
        return (
            f"{self.op} '{self.node}' {shape}: skipped, rank {self.rank} would cost "
            f"{self.rank * (self.fan_in + self.fan_out)} MACs per position instead of {self.macs_before} "
            f"(factorized only when that saves at least {MIN_SAVING:.0%})"
        )


def energy_rank(singular_values: np.ndarray, energy: float) -> int:
    """Smallest r whose first r singular values hold at least `energy` of the squared sum."""
    squared = np.asarray(singular_values, dtype=np.float64) ** 2
    total = squared.sum()
    if total == 0:
        return 1
    cumulative = np.cumsum(squared) / total
    # tolerance: energy 1.0 must select the full rank, not fail on rounding
    return min(int(np.searchsorted(cumulative, energy - 1e-12)) + 1, len(squared))


def factorize(weight: np.ndarray, energy: float) -> tuple[np.ndarray, np.ndarray, int]:
    """weight [fan_in, fan_out] ~= first [fan_in, r] @ second [r, fan_out].

    The singular values are split evenly (sqrt on each side) so both factors have similar value ranges,
    which matters for the INT8 quantization that follows."""
    u, s, vt = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
    rank = energy_rank(s, energy)
    root = np.sqrt(s[:rank])
    first = (u[:, :rank] * root).astype(np.float32)
    second = (root[:, None] * vt[:rank]).astype(np.float32)
    return first, second, rank


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _weight_matrix(node: Any, weights: dict[str, np.ndarray]) -> np.ndarray | None:
    """W as [fan_in, fan_out] when `node` is a layer this module can factorize, else None."""
    if len(node.input) < 2 or node.input[1] not in weights or node.input[0] in weights:
        return None
    w = weights[node.input[1]]
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0) or w.ndim != 2:
            return None
        return w.T if _attr(node, "transB", 0) else w
    if node.op_type == "MatMul":
        return w if w.ndim == 2 else None
    if node.op_type == "Conv":
        if w.ndim != 4 or w.shape[2:] != (1, 1) or _attr(node, "group", 1) != 1:
            return None
        return w[:, :, 0, 0].T  # [C_in, C_out]
    return None


def _replacement(node: Any, first: np.ndarray, second: np.ndarray, names: tuple[str, str, str]) -> list[Any]:
    """Two nodes computing node's output with W = first @ second."""
    import onnx

    first_name, second_name, middle = names
    if node.op_type == "Gemm":
        bias = list(node.input[2:3])
        return [
            onnx.helper.make_node("Gemm", [node.input[0], first_name], [middle], name=f"{node.name}_lr1"),
            onnx.helper.make_node(
                "Gemm",
                [middle, second_name, *bias],
                list(node.output),
                name=f"{node.name}_lr2",
                alpha=float(_attr(node, "alpha", 1.0)),
                beta=float(_attr(node, "beta", 1.0)),
            ),
        ]
    if node.op_type == "MatMul":
        return [
            onnx.helper.make_node("MatMul", [node.input[0], first_name], [middle], name=f"{node.name}_lr1"),
            onnx.helper.make_node(
                "MatMul", [middle, second_name], list(node.output), name=f"{node.name}_lr2"
            ),
        ]
    # 1x1 Conv: the first conv keeps stride and padding (a padded border is zero without a bias, and the
    # second conv then adds the bias there, as the original did); the second is a plain 1x1.
    kept = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.name != "group"}
    return [
        onnx.helper.make_node("Conv", [node.input[0], first_name], [middle], name=f"{node.name}_lr1", **kept),
        onnx.helper.make_node(
            "Conv",
            [middle, second_name, *node.input[2:3]],
            list(node.output),
            name=f"{node.name}_lr2",
            kernel_shape=[1, 1],
        ),
    ]


def low_rank_factorize(model: Any, energy: float) -> tuple[Any, list[LayerDecision]]:
    """A factorized copy of `model` and one decision per candidate layer (applied or skipped, and why)."""
    import onnx
    from onnx import numpy_helper

    if not 0 < energy <= 1:
        raise ValueError(f"energy {energy} must be in (0, 1]")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    decisions: list[LayerDecision] = []
    new_nodes: list[Any] = []
    new_initializers: list[Any] = []
    for index, node in enumerate(graph.node):
        matrix = _weight_matrix(node, weights)
        if matrix is None:
            new_nodes.append(node)
            continue
        label = node.name or f"{node.op_type}_{index}"
        first, second, rank = factorize(matrix, energy)
        fan_in, fan_out = matrix.shape
        applied = rank * (fan_in + fan_out) <= (1 - MIN_SAVING) * fan_in * fan_out
        decisions.append(LayerDecision(label, node.op_type, fan_in, fan_out, rank, applied))
        if not applied:
            new_nodes.append(node)
            continue
        base = f"{label}_lowrank"
        names = (f"{base}_w1", f"{base}_w2", f"{base}_mid")
        if node.op_type == "Conv":
            first_t = first.T[:, :, None, None]  # [r, C_in, 1, 1]
            second_t = second.T[:, :, None, None]  # [C_out, r, 1, 1]
        else:
            first_t, second_t = first, second
        new_initializers += [
            numpy_helper.from_array(np.ascontiguousarray(first_t), names[0]),
            numpy_helper.from_array(np.ascontiguousarray(second_t), names[1]),
        ]
        new_nodes.extend(_replacement(node, first, second, names))
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_initializers)
    used = {name for node in graph.node for name in node.input}
    dropped = {init.name for init in graph.initializer if init.name not in used}
    kept = [init for init in graph.initializer if init.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # models with IR < 4 also list initializers as graph inputs
    inputs = [value for value in graph.input if value.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)
    onnx.checker.check_model(result)
    return result, decisions
