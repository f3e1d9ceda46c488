"""Unstructured magnitude pruning of an fp32 ONNX graph: in every Conv/ConvTranspose/Gemm/MatMul weight, the
given share of the smallest-magnitude values is set to zero. The tensors stay dense: see `honest_notes`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.converter.compression.stats import CompressionReport

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def magnitude_prune(model: Any, sparsity: float) -> tuple[Any, list[str]]:
    """A copy of `model` with `sparsity` of each layer weight zeroed (per tensor), and one line per tensor."""
    import onnx
    from onnx import numpy_helper

    if not 0 < sparsity < 1:
        raise ValueError(f"sparsity {sparsity} must be in (0, 1)")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    weight_names = {
        node.input[1] for node in result.graph.node if node.op_type in WEIGHT_OPS and len(node.input) > 1
    }
    lines = []
    for init in result.graph.initializer:
        if init.name not in weight_names:
            continue
        weight = numpy_helper.to_array(init)
        if not np.issubdtype(weight.dtype, np.floating) or weight.ndim < 2:
            continue
        count = round(weight.size * sparsity)
        if count == 0:
            continue
        flat = np.abs(weight).ravel()
        # exactly `count` zeros, even when several values tie at the threshold
        order = np.argpartition(flat, count - 1)[:count]
        pruned = weight.copy().ravel()
        pruned[order] = 0
        init.CopyFrom(numpy_helper.from_array(pruned.reshape(weight.shape), init.name))
        lines.append(f"'{init.name}' {list(weight.shape)}: {count} of {weight.size} weights set to zero")
    onnx.checker.check_model(result)
    return result, lines


def honest_notes(report: CompressionReport) -> list[str]:
    """What unstructured sparsity did not buy, in this run's measured numbers."""
    b, a = report.before, report.after
    return [
        "unstructured zeros are still multiplied: onnxruntime, XNNPACK, TensorRT and the Edge TPU run dense "
        f"kernels, so MACs stay {b.macs} -> {a.macs} and there is no speed-up "
        f"(host latency measured {b.host_latency_ms:.3f} -> {a.host_latency_ms:.3f} ms)",
        f"no size change: a zero is stored like any other float ({b.size_bytes} -> {a.size_bytes} bytes); "
        f"only compressed it shrinks (deflated {b.zipped_size_bytes} -> {a.zipped_size_bytes} bytes), and "
        "bundles store artifacts uncompressed, so the download does not shrink either",
        "use --prune (structured, PyTorch models) or --low-rank for fewer MACs and smaller files",
    ]
