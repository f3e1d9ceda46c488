"""The MobileNetV2-style reference model: its data helper, its two exports, and its Coral conversion
(depthwise convs, ReLU6, residual Adds, global average pooling) to a full-INT8 TFLite with no float op."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter
from onnx import numpy_helper

from edgefleet.contract.bundle import extract_bundle
from edgefleet.contract.signing import load_public_key
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import ConversionResult, convert
from edgefleet.converter.steps.quantize_tflite import full_int8_violations
from edgefleet.reference_models.mobilenet_digits import (
    LATENCY_SIZE,
    MODEL_FILES,
    TRAIN_SIZE,
    upscale_digits,
    upscaled_digits_sets,
)

CALIB_SAMPLES = 16  # enough for a stable int8 conversion of this model, and fast


def test_upscale_matches_bilinear_half_pixel_resampling(reference_dir: Path) -> None:
    import torch

    with np.load(reference_dir / "eval.npz") as data:
        images = data["image"][:5]
    ours = upscale_digits(images, TRAIN_SIZE)
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(images), size=(TRAIN_SIZE, TRAIN_SIZE), mode="bilinear", align_corners=False
    ).numpy()
    assert ours.shape == (5, 3, TRAIN_SIZE, TRAIN_SIZE) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[:, 0], theirs[:, 0], atol=1e-5)
    assert np.array_equal(ours[:, 0], ours[:, 2])  # grey replicated to three channels
    assert np.array_equal(ours, upscale_digits(images, TRAIN_SIZE))  # deterministic


def test_upscale_refuses_colour_input() -> None:
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        upscale_digits(np.zeros((2, 3, 8, 8), np.float32), TRAIN_SIZE)


def test_the_two_exports_share_weights_and_have_the_mobilenet_ops(reference_dir: Path) -> None:
    small = onnx.load(str(reference_dir / MODEL_FILES[TRAIN_SIZE]))
    large = onnx.load(str(reference_dir / MODEL_FILES[LATENCY_SIZE]))
    for model, size in ((small, TRAIN_SIZE), (large, LATENCY_SIZE)):
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims[1:]] == [3, size, size]
        assert model.opset_import[0].version == 17
    weights = {init.name: numpy_helper.to_array(init) for init in small.graph.initializer}
    assert all(
        np.array_equal(weights[init.name], numpy_helper.to_array(init)) for init in large.graph.initializer
    )
    ops = Counter(node.op_type for node in small.graph.node)
    assert {"Conv", "Clip", "Add", "GlobalAveragePool", "Flatten", "Gemm"} <= set(ops)
    depthwise = [
        n
        for n in small.graph.node
        if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
    ]
    assert len(depthwise) >= 10


def test_the_96_model_classifies_upscaled_digits(reference_dir: Path, tmp_path: Path) -> None:
    _, eval_path = upscaled_digits_sets(tmp_path, TRAIN_SIZE)
    with np.load(eval_path) as data:
        images, labels = data["image"], data["y"]
    session = ort.InferenceSession(
        str(reference_dir / MODEL_FILES[TRAIN_SIZE]), providers=["CPUExecutionProvider"]
    )
    predictions = session.run(None, {"image": images})[0].argmax(1)
    assert (predictions == labels).mean() > 0.97


@pytest.fixture(scope="module")
def coral_mbv2(
    reference_dir: Path, key_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[ConversionResult, Path]:
    data = tmp_path_factory.mktemp("mbv2-data")
    calib, evaluation = upscaled_digits_sets(data, TRAIN_SIZE, calib_samples=CALIB_SAMPLES)
    out = tmp_path_factory.mktemp("mbv2-out")
    result = convert(
        ConversionRequest(
            model=reference_dir / MODEL_FILES[TRAIN_SIZE],
            profile="coral-usb",
            calib=calib,
            eval=evaluation,
            out=out,
            name="mbv2",
            key=key_pair[0],
            max_drop=0.5,
        )
    )
    manifest = extract_bundle(result.bundle_path, out / "unpacked", load_public_key(key_pair[1]))
    return result, out / "unpacked" / manifest.artifact


@pytest.mark.slow
def test_coral_artifact_is_full_int8_with_every_mobilenet_op(
    coral_mbv2: tuple[ConversionResult, Path],
) -> None:
    _, path = coral_mbv2
    assert full_int8_violations(path) == []
    interpreter = Interpreter(model_path=str(path))
    ops = Counter(op["op_name"] for op in interpreter._get_ops_details())
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"} <= set(ops)
    assert ops["ADD"] == 6  # every residual Add stays an int8 ADD
    assert not {"DEQUANTIZE", "TRANSPOSE"} & set(ops)  # no float island, no layout shuffles
    assert ops["QUANTIZE"] <= 2  # only the uint8 <-> int8 requantization at the I/O
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == out["dtype"] == np.uint8
    assert list(inp["shape_signature"]) == [1, TRAIN_SIZE, TRAIN_SIZE, 3]


@pytest.mark.slow
def test_coral_mbv2_drop_is_within_half_a_point(coral_mbv2: tuple[ConversionResult, Path]) -> None:
    result, _ = coral_mbv2
    accuracy = result.metrics.accuracy
    assert accuracy is not None and accuracy.fp32 is not None
    assert accuracy.drop_points <= 0.5
    assert result.report is not None and result.report.budget is not None
    assert result.report.budget.met and result.report.budget.float_layers == []


@pytest.mark.slow
def test_coral_mbv2_layer_errors_name_the_onnx_layers(
    coral_mbv2: tuple[ConversionResult, Path], reference_dir: Path
) -> None:
    result, _ = coral_mbv2
    assert result.report is not None
    layers = result.report.layers
    onnx_nodes = {n.name for n in onnx.load(str(reference_dir / MODEL_FILES[TRAIN_SIZE])).graph.node}
    named = [layer for layer in layers if layer.layer in onnx_nodes]
    convs = [layer for layer in named if layer.op in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(convs) == 37  # every Conv of the model, with its fused Clip
    assert all(layer.nodes[0].endswith("/Conv") for layer in convs)
    assert all(0 < layer.sqnr_db < 100 for layer in named)
