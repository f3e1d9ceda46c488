"""Quantization-aware training of a PyTorch model: fine-tuning (by distillation from the model itself)
with int8 quantization simulated in the forward pass, so the weights learn to live with it.

- Weights of every Conv/Linear: per-output-channel symmetric int8 (scale max|w|/127), as both the TFLite
  and the QDQ artifacts store them; straight-through gradients. At the end the weights are left on that
  grid, so the converter's own quantization reproduces them exactly.
- Activations (the output of every Conv, Linear, BatchNorm and activation module): per-tensor int8 with a
  range tracked by moving average (asymmetric, or symmetric for TensorRT's scheme). These ranges are what
  the weights were trained against; they are carried to the artifact: each is matched to the ONNX tensor
  that holds the same values after export (found numerically, so a BatchNorm folded into its Conv by the
  exporter still matches), and the converter quantizes those tensors with them instead of calibrating.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

MOMENTUM = 0.9  # moving average of the activation ranges, per step
MATCH_RTOL, MATCH_ATOL = 1e-3, 1e-4


@dataclass
class _Range:
    low: float = 0.0
    high: float = 0.0
    seen: bool = False

    def update(self, low: float, high: float) -> None:
        if not self.seen:
            self.low, self.high, self.seen = low, high, True
        else:
            self.low = MOMENTUM * self.low + (1 - MOMENTUM) * low
            self.high = MOMENTUM * self.high + (1 - MOMENTUM) * high


def _weight_quantizer() -> Any:
    from torch import nn

    class PerChannelInt8(nn.Module):
        """Parametrization: the weight as per-channel symmetric int8 would hold it (straight-through)."""

        def forward(self, weight: Any) -> Any:
            flat = weight.reshape(weight.shape[0], -1)
            scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127
            shape = (-1, *[1] * (weight.dim() - 1))
            quantized = (weight / scale.reshape(shape)).round().clamp(-127, 127) * scale.reshape(shape)
            return weight + (quantized - weight).detach()

    return PerChannelInt8()


def _fake_quant(x: Any, low: float, high: float, symmetric: bool) -> Any:
    if symmetric:
        bound = max(abs(low), abs(high), 1e-8)
        scale, zero, qmin, qmax = bound / 127, 0.0, -127, 127
    else:
        low, high = min(low, 0.0), max(high, 0.0)  # zero must be exact
        scale = max(high - low, 1e-8) / 255
        zero, qmin, qmax = round(-low / scale) - 128, -128, 127
    quantized = ((x / scale).round() + zero).clamp(qmin, qmax)
    return x + ((quantized - zero) * scale - x).detach()


ACTIVATION_MODULES = (
    "ReLU",
    "ReLU6",
    "Hardswish",
    "Hardsigmoid",
    "SiLU",
    "Sigmoid",
    "Tanh",
    "GELU",
    "LeakyReLU",
)


def _simulated(module: Any) -> bool:
    """Is int8 simulated at this module: a Conv/Linear (weights and output), a BatchNorm or an activation
    (output)?"""
    from torch import nn

    weighted = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)
    return isinstance(module, weighted) or type(module).__name__ in ACTIVATION_MODULES


@contextmanager
def quantization_simulated(
    model: Any, symmetric: bool, keep_float: frozenset[str] = frozenset()
) -> Iterator[dict[str, _Range]]:
    """Within the block, `model` runs with fake-quantized weights and activations, except the modules named
    in `keep_float` (the artifact keeps them float); yields the activation ranges by module name (moving
    averages over the training steps). On exit the weights stay on the int8 grid and the hooks are gone."""
    import torch
    from torch import nn
    from torch.nn.utils import parametrize

    ranges: dict[str, _Range] = {}
    hooks = []
    weighted = (nn.modules.conv._ConvNd, nn.Linear)

    def observe(name: str) -> Any:
        def hook(module: Any, _inputs: Any, output: Any) -> Any:
            if not isinstance(output, torch.Tensor) or not output.is_floating_point():
                return None
            tracked = ranges.setdefault(name, _Range())
            if model.training:  # the model's mode: a frozen BatchNorm (eval) still tracks its range
                detached = output.detach()
                tracked.update(float(detached.min()), float(detached.max()))
            return _fake_quant(output, tracked.low, tracked.high, symmetric)

        return hook

    for name, module in model.named_modules():
        if name in keep_float or not _simulated(module):
            continue
        if isinstance(module, weighted):
            parametrize.register_parametrization(module, "weight", _weight_quantizer())
        hooks.append(module.register_forward_hook(observe(name)))
    try:
        yield ranges
    finally:
        for handle in hooks:
            handle.remove()
        for module in model.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def module_outputs(model: Any, sample: tuple[Any, ...], names: list[str]) -> dict[str, np.ndarray]:
    """The outputs of the named modules for one forward pass."""
    import torch

    layers = dict(model.named_modules())
    found: dict[str, np.ndarray] = {}
    hooks = [
        layers[name].register_forward_hook(
            lambda _m, _i, out, name=name: found.__setitem__(name, out.detach().clone().numpy())
        )
        for name in names
    ]
    try:
        with torch.no_grad():
            model.eval()(*sample)
    finally:
        for handle in hooks:
            handle.remove()
    return found


def match_onnx_tensors(
    onnx_outputs: dict[str, np.ndarray], torch_outputs: dict[str, np.ndarray]
) -> dict[str, str]:
    """Module name -> the ONNX tensor holding the same values (same shape, allclose); the last module of a
    chain of equal tensors wins (a BatchNorm over its Conv, both folded into one ONNX Conv)."""
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for tensor, values in onnx_outputs.items():
        by_shape.setdefault(values.shape, []).append(tensor)
    matched: dict[str, str] = {}
    claimed: dict[str, str] = {}
    for module, values in torch_outputs.items():
        for tensor in by_shape.get(values.shape, []):
            if np.allclose(onnx_outputs[tensor], values, rtol=MATCH_RTOL, atol=MATCH_ATOL):
                if tensor in claimed:
                    del matched[claimed[tensor]]  # a later module computes the same tensor: it wins
                matched[module], claimed[tensor] = tensor, module
                break
    return matched


def module_tensors(
    model: Any, exported: Any, sample: dict[str, np.ndarray], modules: list[str]
) -> dict[str, str]:
    """Module name -> the ONNX tensor of `exported` (the model's export) that holds the same values on
    `sample` (model input name -> array)."""
    import torch

    from edgefleet.converter.steps.calibration_ranges import session_with_outputs

    names = [value for node in exported.graph.node for value in node.output]
    session = session_with_outputs(exported, names)
    outputs = [o.name for o in session.get_outputs()]
    onnx_values = dict(zip(outputs, session.run(None, sample), strict=True))
    torch_sample = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in sample.values())
    return match_onnx_tensors(onnx_values, module_outputs(model, torch_sample, modules))


def float_modules(
    model: Any, exported: Any, sample: dict[str, np.ndarray], float_nodes: set[str]
) -> frozenset[str]:
    """The modules whose output an ONNX node in `float_nodes` computes (the converter keeps those nodes in
    float): QAT leaves them unquantized, as the artifact will."""
    candidates = [name for name, module in model.named_modules() if _simulated(module)]
    producer = {value: node.name for node in exported.graph.node for value in node.output}
    matched = module_tensors(model, exported, sample, candidates)
    return frozenset(module for module, tensor in matched.items() if producer.get(tensor) in float_nodes)


def learned_onnx_ranges(
    model: Any, exported: Any, sample: dict[str, np.ndarray], ranges: dict[str, _Range]
) -> dict[str, tuple[float, float]]:
    """The modules' learned ranges keyed by the ONNX tensors (of the exported model) that hold the same
    values on `sample` (model input name -> array)."""
    matched = module_tensors(model, exported, sample, sorted(ranges))
    return {tensor: (ranges[module].low, ranges[module].high) for module, tensor in matched.items()}
