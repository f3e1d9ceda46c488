"""2:4 structured sparsity, the pattern NVIDIA's Ampere (and later) tensor cores run at up to twice the
math rate: in every group of 4 consecutive input channels of a weight (for each output channel and kernel
position), at least 2 values are zero. TensorRT uses it when the engine is built with sparsity enabled
(onnxruntime's TensorRT provider option `trt_sparsity_enable`), which the agent sets for bundles marked
`weight_sparsity: "2:4"`.

Masks are chosen by magnitude (the 2 largest |w| of each group stay) and kept through fine-tuning: after
every optimizer step the masked weights are set to zero again. Layers whose input channels are not a
multiple of 4, grouped convolutions and transposed convolutions (whose weight is [in, out, ...], and which
TensorRT's sparse kernels do not cover) stay dense and are listed. The pattern is checked again in the
exported ONNX and in the artifact (an int8 QDQ artifact stores the zeros as its zero point).
"""

from __future__ import annotations

from typing import Any

import numpy as np

GROUP, KEEP = 4, 2
PATTERN = "2:4"


def mask_2_4(weight: np.ndarray) -> np.ndarray | None:
    """Boolean keep-mask of `weight` ([out, in, ...]): in each group of 4 along axis 1, the 2 largest |w|.
    None when axis 1 is not a multiple of 4."""
    if weight.ndim < 2 or weight.shape[1] % GROUP:
        return None
    moved = np.moveaxis(np.abs(weight), 1, -1)  # [out, ..., in]
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // GROUP, GROUP)
    order = np.argsort(groups, axis=-1)  # ascending: the first GROUP - KEEP are dropped
    keep = np.ones_like(groups, dtype=bool)
    np.put_along_axis(keep, order[..., : GROUP - KEEP], False, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, 1)


def follows_2_4(weight: np.ndarray, axis: int = 1) -> bool:
    """True when every group of 4 along `axis` has at least 2 zeros."""
    if weight.ndim < 2 or weight.shape[axis] % GROUP:
        return False
    moved = np.moveaxis(weight, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // GROUP, GROUP)
    return bool(((groups == 0).sum(axis=-1) >= GROUP - KEEP).all())


def apply_masks(module: Any, skip: set[str]) -> tuple[dict[str, Any], list[str]]:
    """Zero the masked weights of every Conv (not grouped, not transposed) and Linear of `module` in place,
    except the layers named in `skip`; return the masks by layer name and one line per layer left dense (and
    why)."""
    import torch
    from torch import nn

    masks: dict[str, Any] = {}
    dense: list[str] = []
    for name, layer in module.named_modules():
        if not isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)) or name in skip:
            continue
        if isinstance(layer, nn.modules.conv._ConvTransposeNd):
            dense.append(f"{name}: dense (transposed convolution)")
            continue
        if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups != 1:
            dense.append(f"{name}: dense (grouped convolution)")
            continue
        mask = mask_2_4(layer.weight.detach().numpy())
        if mask is None:
            dense.append(f"{name}: dense ({layer.weight.shape[1]} input channels, not a multiple of 4)")
            continue
        masks[name] = torch.from_numpy(mask)
        with torch.no_grad():
            layer.weight.mul_(masks[name])
    return masks, dense


def keep_masks(masks: dict[str, Any]) -> Any:
    """The after-step hook of fine-tuning: the masked weights back to zero."""
    import torch

    @torch.no_grad()
    def reapply(module: Any) -> None:
        layers = dict(module.named_modules())
        for name, mask in masks.items():
            layers[name].weight.mul_(mask)

    return reapply


def _initializer_of(model: Any, name: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The initializer behind a weight input (through a DequantizeLinear: its int values and zero point)."""
    from onnx import numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    if name in inits:
        return numpy_helper.to_array(inits[name]), None
    producer = next((n for n in model.graph.node if name in n.output), None)
    if producer is None or producer.op_type != "DequantizeLinear" or producer.input[0] not in inits:
        return None
    zero_point = None
    if len(producer.input) > 2 and producer.input[2] in inits:
        zero_point = numpy_helper.to_array(inits[producer.input[2]])
    return numpy_helper.to_array(inits[producer.input[0]]), zero_point


def onnx_weights_2_4(model: Any) -> tuple[int, int]:
    """(weights that follow 2:4 along their input-channel axis, weights that could: input channels a multiple
    of 4) over the Conv (group 1), Gemm and MatMul weights of an fp32 or QDQ ONNX model."""
    followed = candidates = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Conv" and "group" in attrs and attrs["group"].i != 1:
            continue
        found = _initializer_of(model, node.input[1])
        if found is None:
            continue
        weight, zero_point = found
        axis = 1  # Conv [K, C, ...]; Gemm with transB [N, K]
        if node.op_type == "MatMul" or (
            node.op_type == "Gemm" and not ("transB" in attrs and attrs["transB"].i)
        ):
            axis = 0  # [K, N]
        if weight.ndim < 2 or weight.shape[axis] % GROUP:
            continue
        candidates += 1
        zeros = (
            weight if zero_point is None else weight.astype(np.int64) - _broadcast(zero_point, weight, axis)
        )
        followed += follows_2_4(zeros, axis)
    return followed, candidates


def _broadcast(zero_point: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
    """A per-tensor or per-output-channel zero point, shaped to subtract from `weight`."""
    zp = zero_point.astype(np.int64)
    if zp.ndim == 0 or zp.size == 1:
        return zp.reshape(())
    out_axis = 0 if axis == 1 else 1
    shape = [1] * weight.ndim
    shape[out_axis] = zp.size
    return zp.reshape(shape)
