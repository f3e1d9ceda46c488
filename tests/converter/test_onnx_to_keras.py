"""The ONNX -> Keras (NHWC) translation, on small graphs built with onnx.helper, checked against onnxruntime;
and one of them converted end to end to full-INT8 TFLite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from target_graphs import checked_model

from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.errors import UnsupportedModelError
from edgefleet.converter.pipeline import convert
from edgefleet.converter.steps.onnx_to_keras import translate_onnx_to_keras

# whole conversions or training runs: the full suite runs them, the fast lane (-m "not slow") does not
pytestmark = pytest.mark.slow

RNG = np.random.default_rng(0)


class GraphBuilder:
    """A small ONNX graph with one NCHW input named 'x', built node by node."""

    def __init__(self, shape: list[int | str], opset: int = 13) -> None:
        self.shape, self.opset = shape, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.last = "x"
        self.count = 0

    def const(self, array: np.ndarray) -> str:
        self.count += 1
        name = f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def add(self, op: str, *inputs: str, **attrs: object) -> str:
        self.count += 1
        out = f"{op.lower()}{self.count}"
        self.nodes.append(
            helper.make_node(op, [self.last, *inputs], [out], name=f"/{op}_{self.count}", **attrs)
        )
        self.last = out
        return out

    def conv(self, cin: int, cout: int, k: int, group: int = 1, **attrs: object) -> str:
        weight = RNG.normal(0, 0.3, (cout, cin // group, k, k)).astype(np.float32)
        bias = RNG.normal(0, 0.1, cout).astype(np.float32)
        return self.add(
            "Conv", self.const(weight), self.const(bias), group=group, kernel_shape=[k, k], **attrs
        )

    def batch_norm(self, c: int) -> str:
        params = [
            RNG.uniform(0.5, 1.5, c),
            RNG.normal(0, 0.1, c),
            RNG.normal(0, 0.1, c),
            RNG.uniform(0.5, 1.5, c),
        ]
        return self.add("BatchNormalization", *(self.const(p.astype(np.float32)) for p in params))

    def build(self, out_shape: list[int | str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "test",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.shape)],
            [helper.make_tensor_value_info(self.last, TensorProto.FLOAT, out_shape)],
            self.inits,
        )
        return checked_model(graph, self.opset)


def mobilenet_like() -> onnx.ModelProto:
    g = GraphBuilder(["batch", 3, 16, 16])
    g.conv(3, 8, 3, strides=[2, 2], pads=[1, 1, 1, 1])  # torch-style padding: explicit, not TF 'same'
    g.batch_norm(8)  # folded into the conv
    g.add("Clip", g.const(np.float32(0)), g.const(np.float32(6)))  # ReLU6
    stem = g.last
    g.conv(8, 8, 3, group=8, pads=[1, 1, 1, 1])  # depthwise
    g.add("Relu")
    g.conv(8, 8, 1, group=2)  # grouped pointwise
    g.add("Add", stem)  # residual
    g.conv(8, 16, 1)
    g.add("AveragePool", kernel_shape=[2, 2], strides=[2, 2])
    g.add("MaxPool", kernel_shape=[2, 2], strides=[1, 1], auto_pad="SAME_UPPER")
    g.add("GlobalAveragePool")
    shape = g.add("Shape")  # x.view(x.size(0), -1) as torch exports it
    g.nodes[-1].input[0] = g.nodes[-2].output[0]
    g.last = shape
    g.add("Gather", g.const(np.int64(0)), axis=0)
    g.add("Unsqueeze", g.const(np.array([0], np.int64)))
    g.add("Concat", g.const(np.array([-1], np.int64)), axis=0)
    target = g.last
    g.last = g.nodes[-5].output[0]  # the pooled feature map
    g.add("Reshape", target)
    g.add("MatMul", g.const(RNG.normal(0, 0.3, (16, 10)).astype(np.float32)))
    g.add("Add", g.const(RNG.normal(0, 0.1, 10).astype(np.float32)))  # fused into the Dense bias
    return g.build(["batch", 10])


def flatten_head() -> onnx.ModelProto:
    """Conv -> standalone BN -> Sub/Mul constants -> Flatten of a 4x4 map -> Gemm(transB) -> Softmax."""
    g = GraphBuilder([1, 2, 8, 8], opset=11)
    g.conv(2, 4, 3, pads=[1, 1, 1, 1])
    g.add("Relu")
    g.batch_norm(4)  # not directly after a conv: kept as an affine
    g.add("Sub", g.const(RNG.normal(0, 0.1, (4, 1, 1)).astype(np.float32)))
    g.add("Mul", g.const(np.float32(1.5)))
    g.add("MaxPool", kernel_shape=[2, 2], strides=[2, 2])
    g.add("Flatten", axis=1)
    g.add(
        "Gemm",
        g.const(RNG.normal(0, 0.3, (5, 64)).astype(np.float32)),
        g.const(np.zeros(5, np.float32)),
        transB=1,
    )
    g.add("Softmax", axis=1)
    return g.build([1, 5])


def _compare(model: onnx.ModelProto, shape: tuple[int, ...]) -> None:
    x = RNG.random(shape, dtype=np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    translation = translate_onnx_to_keras(model)
    perm = translation.input_perms["x"]
    assert perm == [0, 2, 3, 1]
    got = np.asarray(translation.model([np.transpose(x, perm)], training=False))
    np.testing.assert_allclose(got, expected[0], rtol=1e-4, atol=1e-5)


def test_mobilenet_like_graph_matches_onnxruntime() -> None:
    _compare(mobilenet_like(), (1, 3, 16, 16))


def test_flatten_of_feature_map_permutes_gemm_rows() -> None:
    model = flatten_head()
    _compare(model, (1, 2, 8, 8))
    layers = {type(layer).__name__ for layer in translate_onnx_to_keras(model).model.layers}
    assert "Permute" not in layers


def test_unsupported_op_names_node_and_what_to_do() -> None:
    g = GraphBuilder([1, 1, 4, 4])
    g.add("Hardmax")
    with pytest.raises(
        UnsupportedModelError, match=r"node '/Hardmax_1' \(Hardmax\): op type is not supported; .*ONNX"
    ):
        translate_onnx_to_keras(g.build(g.shape))


def test_dynamic_spatial_dims_are_refused() -> None:
    g = GraphBuilder([1, 1, "h", "w"])
    g.add("Relu")
    with pytest.raises(UnsupportedModelError, match="input 'x' axis 2 is dynamic"):
        translate_onnx_to_keras(g.build(g.shape))


def test_mobilenet_like_converts_to_full_int8(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    model_path = tmp_path / "mbv.onnx"
    onnx.save(mobilenet_like(), str(model_path))
    images = RNG.random((64, 3, 16, 16), dtype=np.float32)
    np.savez(tmp_path / "calib.npz", x=images)
    np.savez(tmp_path / "eval.npz", x=images[:32])
    request = make_request(
        "rpi5",
        model=model_path,
        calib=tmp_path / "calib.npz",
        eval=tmp_path / "eval.npz",
        out=tmp_path / "out",
        name="mbv",
    )
    result = convert(request)
    accuracy = result.metrics.accuracy
    assert accuracy is not None and accuracy.metric == "top1_agreement" and accuracy.fp32 is None
    assert accuracy.artifact >= 80.0  # random weights and inputs: agreement, not accuracy
    assert result.inputs[0].shape == [1, 16, 16, 3] and result.inputs[0].float_shape == [None, 3, 16, 16]
