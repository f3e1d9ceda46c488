"""ONNX conversions: INT8 QDQ (jetson-orin-nano, TensorRT flavour; an 'ort' flavour profile) and FP16
(jetson-nano), inspected with onnx and run with onnxruntime's CPU provider."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgefleet.contract.profiles import PROFILES_PATH_ENV
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import ConversionResult, convert

ORT_FLAVOUR_PROFILE = """\
name: cpu-int8
description: test profile, INT8 QDQ ONNX for onnxruntime on CPUs
artifact: {format: onnx, precision: int8, io_dtype: float32, quant_flavor: ort}
runtime: {engine: onnxruntime, threads: 1, providers: [CPUExecutionProvider]}
memory_budget_mb: 256
latency_budget_ms: 10
"""


def _accuracy(
    model: onnx.ModelProto, images: np.ndarray, labels: np.ndarray, exact_qdq: bool = False
) -> float:
    options = ort.SessionOptions()
    if exact_qdq:
        # Score the QDQ model's own int8 semantics: this x86 host's fused u8s8 kernels saturate (no VNNI).
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": images})[0]
    return float((logits.argmax(1) == labels).mean() * 100)


def _zero_points(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return {
        node.input[2]: initializers[node.input[2]]
        for node in model.graph.node
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2
    }


@pytest.fixture(scope="module")
def ort_flavour_profile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("profiles")
    (directory / "cpu-int8.yaml").write_text(ORT_FLAVOUR_PROFILE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PROFILES_PATH_ENV, str(directory))
        yield "cpu-int8"


def test_tensorrt_int8_is_symmetric_qdq(
    converted: Callable[[str], ConversionResult],
    unpack_artifact: Callable[[ConversionResult], Path],
    eval_set: tuple[np.ndarray, np.ndarray],
) -> None:
    result = converted("jetson-orin-nano")
    model = onnx.load(str(unpack_artifact(result)))
    onnx.checker.check_model(model)
    ops = [node.op_type for node in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    zero_points = _zero_points(model)
    assert zero_points and all(zp.dtype == np.int8 and not zp.any() for zp in zero_points.values())
    conv_weight_scales = [
        numpy_helper.to_array(init)
        for init in model.graph.initializer
        if init.name.endswith("weight_scale") and "features" in init.name
    ]
    assert conv_weight_scales and all(scale.size > 1 for scale in conv_weight_scales)  # per-channel
    # I/O stay float32 with the dynamic batch
    (spec_in,), (spec_out,) = result.inputs, result.outputs
    assert (spec_in.dtype, spec_in.shape, spec_in.perm, spec_in.quantization) == (
        "float32",
        [None, 1, 8, 8],
        None,
        None,
    )
    assert (spec_out.dtype, spec_out.shape) == ("float32", [None, 10])
    images, labels = eval_set
    accuracy = _accuracy(model, images, labels, exact_qdq=True)
    assert result.metrics.accuracy is not None and result.metrics.accuracy.fp32 is not None
    assert accuracy == pytest.approx(result.metrics.accuracy.artifact, abs=0.01)
    assert result.metrics.accuracy.fp32 - accuracy <= 1.0


def test_ort_flavour_has_uint8_activations(
    ort_flavour_profile: str,
    make_request: Callable[..., ConversionRequest],
    unpack_artifact: Callable[[ConversionResult], Path],
    eval_set: tuple[np.ndarray, np.ndarray],
) -> None:
    result = convert(make_request(ort_flavour_profile))
    model = onnx.load(str(unpack_artifact(result)))
    dtypes = {zp.dtype for zp in _zero_points(model).values()}
    assert {np.dtype(np.uint8), np.dtype(np.int8)} <= dtypes  # uint8 activations, int8 weights
    assert result.metrics.accuracy is not None and result.metrics.accuracy.fp32 is not None
    assert result.metrics.accuracy.fp32 - _accuracy(model, *eval_set, exact_qdq=True) <= 1.0


def test_fp16_has_float16_weights_and_runs_on_cpu(
    converted: Callable[[str], ConversionResult],
    unpack_artifact: Callable[[ConversionResult], Path],
    eval_set: tuple[np.ndarray, np.ndarray],
) -> None:
    result = converted("jetson-nano")
    model = onnx.load(str(unpack_artifact(result)))
    onnx.checker.check_model(model)
    weights = [numpy_helper.to_array(init) for init in model.graph.initializer]
    assert weights and all(w.dtype == np.float16 for w in weights if w.ndim > 1)
    io_types = {v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io_types == {onnx.TensorProto.FLOAT}
    assert result.inputs[0].shape == [None, 1, 8, 8]
    images, labels = eval_set
    accuracy = _accuracy(model, images, labels)  # CPUExecutionProvider only
    assert result.metrics.accuracy is not None and result.metrics.accuracy.fp32 is not None
    assert result.metrics.accuracy.fp32 - accuracy <= 1.0
    assert result.metrics.size_bytes_artifact < 0.6 * result.metrics.size_bytes_fp32
