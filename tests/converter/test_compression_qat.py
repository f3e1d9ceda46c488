"""Quantization-aware training: the weights end on their int8 grid, the learned activation ranges are
matched to the exported ONNX tensors, and the artifact is quantized with exactly those ranges."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.errors import ConversionError
from edgefleet.converter.pipeline import convert

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_test_setup")]


def test_qat_weights_sit_on_the_int8_grid_and_learned_ranges_reach_the_qdq_artifact(
    torch_request: Callable[..., ConversionRequest], unpack_artifact: Callable[..., Path]
) -> None:
    import onnx
    import torch
    from onnx import numpy_helper
    from tiny_torch_models import digits_cnn

    from edgefleet.converter.compression.qat import quantization_simulated

    # the weights a QAT run leaves: per output channel, integer multiples of max|w| / 127
    model = digits_cnn()
    with quantization_simulated(model, symmetric=True):
        pass
    weight = model.features[0].weight.detach().numpy().reshape(16, -1)
    steps = weight / (np.abs(weight).max(axis=1, keepdims=True) / 127)
    assert np.allclose(steps, np.round(steps), atol=1e-3)

    # a module the artifact keeps in float is trained in float: no grid, no range
    model = digits_cnn()
    with quantization_simulated(model, symmetric=True, keep_float=frozenset({"features.0"})) as ranges:
        model.train()(torch.zeros(2, 1, 8, 8))
    kept = model.features[0].weight.detach().numpy().reshape(16, -1)
    steps = kept / (np.abs(kept).max(axis=1, keepdims=True) / 127)
    assert not np.allclose(steps, np.round(steps), atol=1e-3)
    assert "features.0" not in ranges and "features.1" in ranges

    request = torch_request("jetson-orin-nano", "qat", qat_epochs=2)
    captured: dict[str, tuple[float, float]] = {}
    from edgefleet.converter.steps import calibration_ranges

    original = calibration_ranges.onnx_activation_ranges

    def spy(ctx, method):  # type: ignore[no-untyped-def]
        captured.update(ctx.learned_ranges)
        return original(ctx, method)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibration_ranges, "onnx_activation_ranges", spy)
        result = convert(request, torch_module=digits_cnn())
    (report,) = result.compression
    assert report.method == "qat" and "symmetric (TensorRT)" in report.setting
    assert report.notes[0].startswith(f"{len(captured)} of ") and len(captured) >= 5
    artifact = onnx.load(str(unpack_artifact(result)))
    scales = {}
    inits = {i.name: numpy_helper.to_array(i) for i in artifact.graph.initializer}
    for node in artifact.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in captured:
            scales[node.input[0]] = float(inits[node.input[1]])
    # each Relu output is quantized with its learned range (a Conv feeding the Relu shares it, as
    # quantize_static does with calibrated ranges)
    relus = {name: scale for name, scale in scales.items() if name.endswith("Relu_output_0")}
    assert len(relus) >= 3
    for tensor, scale in relus.items():
        low, high = captured[tensor]
        assert scale == pytest.approx(max(abs(low), abs(high)) / 127, rel=1e-4)


def test_qat_needs_pytorch_and_an_int8_profile(
    make_request: Callable[..., ConversionRequest], torch_request: Callable[..., ConversionRequest]
) -> None:
    from tiny_torch_models import digits_cnn

    with pytest.raises(ConversionError, match="--qat fine-tunes the model"):
        convert(make_request("jetson-orin-nano", qat_epochs=1))
    fp16 = torch_request("jetson-nano", "qat16", qat_epochs=1)
    with pytest.raises(ConversionError, match="--qat trains for int8; profile 'jetson-nano'"):
        convert(fp16, torch_module=digits_cnn())
