"""Low-rank factorization of an fp32 ONNX graph: the weight matrix W of a fully-connected layer (Gemm, or
MatMul with a constant 2-D weight) or of a 1x1 convolution is replaced by two thinner factors from its
truncated SVD. The rank keeps the requested share of W's energy (sum of squared singular values); a layer
is factorized only when the two factors cost fewer MACs than W, by at least MIN_SAVING of W's MACs:
r * (in + out) <= (1 - MIN_SAVING) * in * out. A smaller saving would not pay for the accuracy it costs and
the extra node it adds.

With `convolutions=True`, KxK convolutions (not grouped) get a Tucker-2 decomposition (Kim et al. 2016):
W[K, C, R, S] ~= core[rK, rC, R, S] x U_K[K, rK] x U_C[C, rC], the two ranks chosen by energy on the
singular values of W's output- and input-channel unfoldings (HOSVD). It runs as three convolutions: a 1x1
projection C -> rC, the RxS core rC -> rK with the original stride and padding (padding zeros project to
zeros: the result is exact up to the truncation), and a 1x1 expansion rK -> K with the bias; applied under
the same MIN_SAVING rule, counting the projection at the input's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class TuckerDecision:
    node: str
    out_channels: int
    in_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    ranks: tuple[int, int]  # (rK, rC)
    applied: bool
    op: str = "Conv"

    @property
    def macs_before(self) -> int:  # per output position
        return self.out_channels * self.in_channels * self.kernel[0] * self.kernel[1]

    @property
    def macs_factorized(self) -> int:
        r_out, r_in = self.ranks
        projection = self.in_channels * r_in * self.stride[0] * self.stride[1]  # at the input's resolution
        return projection + r_out * r_in * self.kernel[0] * self.kernel[1] + r_out * self.out_channels

    @property
    def macs_after(self) -> int:
        return self.macs_factorized if self.applied else self.macs_before

    def describe(self) -> str:
        shape = f"{self.out_channels}x{self.in_channels}x{self.kernel[0]}x{self.kernel[1]}"
        ranks = f"Tucker-2 ranks {self.ranks[0]}x{self.ranks[1]}"
        where = f"Conv '{self.node}' {shape}"
        if self.applied:
            return f"{where}: {ranks}, MACs per position {self.macs_before} -> {self.macs_after}"
        return (
            f"{where}: skipped, {ranks} would cost {self.macs_factorized} MACs per position instead of "
            f"{self.macs_before} (factorized only when that saves at least {MIN_SAVING:.0%})"
        )


def tucker2(weight: np.ndarray, energy: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """weight [K, C, R, S] -> (U_K [K, rK], core [rK, rC, R, S], U_C [C, rC]) keeping `energy` of each
    unfolding's squared singular values."""
    w = weight.astype(np.float64)
    k, c = w.shape[:2]
    u_k, s_k, _ = np.linalg.svd(w.reshape(k, -1), full_matrices=False)
    u_c, s_c, _ = np.linalg.svd(np.moveaxis(w, 1, 0).reshape(c, -1), full_matrices=False)
    u_k, u_c = u_k[:, : energy_rank(s_k, energy)], u_c[:, : energy_rank(s_c, energy)]
    core = np.einsum("kcrs,ka,cb->abrs", w, u_k, u_c)
    return u_k.astype(np.float32), core.astype(np.float32), u_c.astype(np.float32)


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


def _tucker_candidate(node: Any, weights: dict[str, np.ndarray]) -> np.ndarray | None:
    """W [K, C, R, S] of a KxK (not 1x1), not grouped convolution with a constant weight, else None."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
        return None
    w = weights[node.input[1]]
    if w.ndim != 4 or w.shape[2:] == (1, 1) or _attr(node, "group", 1) != 1:
        return None
    return w


def _tucker_nodes(node: Any, label: str) -> tuple[list[Any], tuple[str, str, str]]:
    """The projection, core and expansion convolutions replacing `node`, and their weight names."""
    import onnx

    base = f"{label}_tucker"
    names = (f"{base}_project_w", f"{base}_core_w", f"{base}_expand_w")
    kept = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.name != "group"}
    nodes = [
        onnx.helper.make_node(
            "Conv", [node.input[0], names[0]], [f"{base}_projected"], name=f"{label}_tk1", kernel_shape=[1, 1]
        ),
        onnx.helper.make_node(
            "Conv", [f"{base}_projected", names[1]], [f"{base}_core"], name=f"{label}_tk2", **kept
        ),
        onnx.helper.make_node(
            "Conv",
            [f"{base}_core", names[2], *node.input[2:3]],
            list(node.output),
            name=f"{label}_tk3",
            kernel_shape=[1, 1],
        ),
    ]
    return nodes, names


def low_rank_factorize(
    model: Any, energy: float, convolutions: bool = False
) -> tuple[Any, list[LayerDecision | TuckerDecision]]:
    """A factorized copy of `model` and one decision per candidate layer (applied or skipped, and why);
    `convolutions`: KxK convolutions too (Tucker-2)."""
    import onnx
    from onnx import numpy_helper

    if not 0 < energy <= 1:
        raise ValueError(f"energy {energy} must be in (0, 1]")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    decisions: list[LayerDecision | TuckerDecision] = []
    new_nodes: list[Any] = []
    new_initializers: list[Any] = []
    for index, node in enumerate(graph.node):
        label = node.name or f"{node.op_type}_{index}"
        kernel = _tucker_candidate(node, weights) if convolutions else None
        if kernel is not None:
            u_k, core, u_c = tucker2(kernel, energy)
            strides = tuple(_attr(node, "strides", [1, 1]))
            decision = TuckerDecision(
                label, kernel.shape[0], kernel.shape[1], (kernel.shape[2], kernel.shape[3]),
                (int(strides[0]), int(strides[1])), (u_k.shape[1], u_c.shape[1]), applied=False,
            )  # fmt: skip
            applied = decision.macs_factorized <= (1 - MIN_SAVING) * decision.macs_before
            decisions.append(replace(decision, applied=applied))
            if not applied:
                new_nodes.append(node)
                continue
            nodes, names = _tucker_nodes(node, label)
            new_initializers += [
                numpy_helper.from_array(np.ascontiguousarray(u_c.T[:, :, None, None]), names[0]),
                numpy_helper.from_array(np.ascontiguousarray(core), names[1]),
                numpy_helper.from_array(np.ascontiguousarray(u_k[:, :, None, None]), names[2]),
            ]
            new_nodes.extend(nodes)
            continue
        matrix = _weight_matrix(node, weights)
        if matrix is None:
            new_nodes.append(node)
            continue
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
