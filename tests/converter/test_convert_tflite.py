"""Full-INT8 TFLite conversions (rpi4: int8 I/O, coral-usb: uint8 I/O), inspected and run with litert."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from edgefleet.contract.bundle import extract_bundle
from edgefleet.contract.signing import load_public_key
from edgefleet.contract.tensors import from_artifact, to_artifact
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import ConversionResult, convert

TFLITE_PROFILES = {"rpi4": np.int8, "coral-usb": np.uint8}
# int32 operands a full-INT8 model may keep: conv/FC bias, and RESHAPE's target shape.
INT32_OPERANDS = {"CONV_2D": {2}, "DEPTHWISE_CONV_2D": {2}, "FULLY_CONNECTED": {2}, "RESHAPE": {1}}


@pytest.fixture(scope="module", params=sorted(TFLITE_PROFILES))
def tflite(
    request: pytest.FixtureRequest,
    converted: Callable[[str], ConversionResult],
    key_pair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, ConversionResult, Path]:
    result = converted(request.param)
    dest = tmp_path_factory.mktemp("unpacked") / request.param
    manifest = extract_bundle(result.bundle_path, dest, load_public_key(key_pair[1]))
    return request.param, result, dest / manifest.artifact


def test_every_tensor_is_int8_except_int32_bias_and_shape(tflite: tuple[str, ConversionResult, Path]) -> None:
    profile, _, path = tflite
    interpreter = Interpreter(model_path=str(path))
    int32_allowed = set()
    for op in interpreter._get_ops_details():
        for position in INT32_OPERANDS.get(op["op_name"], set()):
            int32_allowed.add(int(op["inputs"][position]))
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    # No DEQUANTIZE or TRANSPOSE: int8 end to end, and Flatten needs no transpose (permuted FC weights).
    # uint8 I/O adds a QUANTIZE (uint8 <-> int8 requantization) at each end, which the Edge TPU runs.
    allowed = {"CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "RESHAPE"}
    if TFLITE_PROFILES[profile] is np.uint8:
        allowed.add("QUANTIZE")
    assert ops <= allowed
    for tensor in interpreter.get_tensor_details():
        dtype = np.dtype(tensor["dtype"])
        if dtype == np.int32:
            assert tensor["index"] in int32_allowed, tensor["name"]
        else:
            assert dtype in (np.int8, np.uint8), (tensor["name"], dtype)


def test_static_shapes_one_subgraph_and_profile_io_dtype(tflite: tuple[str, ConversionResult, Path]) -> None:
    profile, _, path = tflite
    interpreter = Interpreter(model_path=str(path))
    assert interpreter.num_subgraphs() == 1
    for tensor in interpreter.get_tensor_details():
        assert (np.asarray(tensor["shape_signature"]) >= 0).all(), tensor["name"]
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(inp["shape_signature"]) == [1, 8, 8, 1]
    assert list(out["shape_signature"]) == [1, 10]
    assert inp["dtype"] == out["dtype"] == TFLITE_PROFILES[profile]
    assert (inp["name"], out["name"]) == ("image", "logits")  # the source model's names, as in the manifest


def test_manifest_tensor_specs(tflite: tuple[str, ConversionResult, Path]) -> None:
    profile, result, _ = tflite
    (inp,), (out,) = result.inputs, result.outputs
    dtype = np.dtype(TFLITE_PROFILES[profile]).name
    assert (inp.name, inp.dtype, inp.shape, inp.float_shape, inp.perm) == (
        "image",
        dtype,
        [1, 8, 8, 1],
        [None, 1, 8, 8],
        [0, 2, 3, 1],
    )
    assert (out.name, out.dtype, out.shape, out.float_shape, out.perm) == (
        "logits",
        dtype,
        [1, 10],
        [None, 10],
        None,
    )
    assert inp.quantization is not None and out.quantization is not None
    if profile == "coral-usb":
        assert inp.quantization.zero_point == 0  # inputs in [0, 1] -> uint8 0..255


def test_litert_accuracy_within_one_point_of_fp32(
    tflite: tuple[str, ConversionResult, Path], eval_set: tuple[np.ndarray, np.ndarray]
) -> None:
    _, result, path = tflite
    images, labels = eval_set
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    (in_spec,), (out_spec,) = result.inputs, result.outputs
    predictions = []
    for image in images:
        interpreter.set_tensor(inp["index"], to_artifact(in_spec, image[None])[0])
        interpreter.invoke()
        predictions.append(from_artifact(out_spec, interpreter.get_tensor(out["index"]), True).argmax())
    accuracy = float((np.array(predictions) == labels).mean() * 100)
    metrics = result.metrics.accuracy
    assert metrics is not None and metrics.fp32 is not None
    assert accuracy == pytest.approx(metrics.artifact, abs=0.01)
    assert metrics.fp32 - accuracy <= 1.0


def test_a_model_whose_inputs_the_tflite_converter_reorders_is_calibrated_and_measured_by_name(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    """TFLite sorts inputs by name ('h' before 'input'); calibration, the per-layer comparison and the
    artifact's I/O names must follow the names, or each input is calibrated and fed with another's data."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(0, 0.3, (16, 8)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 8], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["projected"]),
            helper.make_node("Reshape", ["h", "shape"], ["state"]),
            helper.make_node("Mul", ["state", "projected"], ["gated"]),
            helper.make_node("Tanh", ["gated"], ["out"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 1, 8]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 8])],
        [weight, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "two_inputs.onnx")
    for split, seed in (("calib", 1), ("eval", 2)):
        data = np.random.default_rng(seed)
        # very different ranges: swapped data would be clipped and fail the budget
        np.savez(
            tmp_path / f"{split}.npz",
            input=data.normal(0, 4, (64, 16)).astype(np.float32),
            h=data.uniform(0, 0.2, (64, 1, 8)).astype(np.float32),
        )
    result = convert(
        make_request(
            "rpi4",
            model=tmp_path / "two_inputs.onnx",
            calib=tmp_path / "calib.npz",
            eval=tmp_path / "eval.npz",
            out=tmp_path / "out",
            name="two_inputs",
            output_kinds={"out": "tensor"},
        )
    )
    assert sorted(spec.name for spec in result.inputs) == ["h", "input"]
    assert {spec.name: spec.float_shape[1:] for spec in result.inputs} == {"h": [1, 8], "input": [16]}
    accuracy = result.metrics.accuracy
    assert accuracy is not None and accuracy.measure == "sqnr" and accuracy.artifact > 25
