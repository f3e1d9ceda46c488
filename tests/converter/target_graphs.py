"""Small ONNX graphs for the target tests, built with onnx.helper: models a target cannot fully run, models
with dynamic dimensions, and a hand-made QDQ graph that breaks TensorRT's explicit-quantization rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(7)


def checked_model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    """The graph as a model at `opset` (IR version 8, what the pinned onnxruntime reads), checked by onnx."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class Graph:
    """Nodes appended in order, each reading the previous output; initializers made from arrays."""

    def __init__(self, input_shape: list[int | str], opset: int = 13) -> None:
        self.input_shape, self.opset = input_shape, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.last = "x"

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def add(self, op: str, *inputs: str, name: str | None = None, **attrs: object) -> str:
        name = name or f"/{op}_{len(self.nodes)}"
        out = f"{name.strip('/')}_out"
        self.nodes.append(helper.make_node(op, [self.last, *inputs], [out], name=name, **attrs))
        self.last = out
        return out

    def conv(self, cin: int, cout: int, name: str) -> str:
        weight = RNG.normal(0, 0.4, (cout, cin, 3, 3)).astype(np.float32)
        bias = RNG.normal(0, 0.1, cout).astype(np.float32)
        return self.add(
            "Conv",
            self.const(f"{name}.w", weight),
            self.const(f"{name}.b", bias),
            name=name,
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        )

    def model(self, output_shape: list[int | str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "target-test",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.input_shape)],
            [helper.make_tensor_value_info(self.last, TensorProto.FLOAT, output_shape)],
            self.inits,
        )
        return checked_model(graph, self.opset)


def classifier(
    activation: str = "Relu",
    input_shape: list[int | str] | None = None,
    head: str | None = None,
    opset: int = 13,
) -> onnx.ModelProto:
    """Conv -> activation -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm (-> head, e.g. Softmax);
    1 input channel."""
    g = Graph(input_shape or ["batch", 1, 8, 8], opset)
    g.conv(1, 8, "/conv1/Conv")
    g.add(activation, name=f"/act/{activation}", **({"alpha": 0.1} if activation == "LeakyRelu" else {}))
    g.conv(8, 8, "/conv2/Conv")
    g.add("Relu", name="/relu2/Relu")
    g.add("GlobalAveragePool", name="/pool/GlobalAveragePool")
    g.add("Flatten", name="/flatten/Flatten", axis=1)
    g.add(
        "Gemm",
        g.const("fc.w", RNG.normal(0, 0.5, (5, 8)).astype(np.float32)),
        g.const("fc.b", np.zeros(5, np.float32)),
        name="/fc/Gemm",
        transB=1,
    )
    if head is not None:
        g.add(head, name=f"/head/{head}", axis=1)
    return g.model(["batch", 5])


def save_with_data(model: onnx.ModelProto, directory: Path, shape: tuple[int, ...]) -> tuple[Path, Path]:
    """The model and a calibration/evaluation .npz of random images in [0, 1] for input 'x'."""
    directory.mkdir(parents=True, exist_ok=True)
    model_path, data_path = directory / "model.onnx", directory / "data.npz"
    onnx.save(model, str(model_path))
    np.savez(data_path, x=RNG.random(shape, dtype=np.float32))
    return model_path, data_path


def _qdq(g: Graph, name: str, scale: np.ndarray, zero_point: np.ndarray, **attrs: object) -> None:
    g.add(
        "QuantizeLinear",
        g.const(f"{name}.s", scale),
        g.const(f"{name}.zp", zero_point),
        name=f"{name}/Q",
        **attrs,
    )
    g.add("DequantizeLinear", f"{name}.s", f"{name}.zp", name=f"{name}/DQ", **attrs)


def _weight(g: Graph, name: str, q: np.ndarray, scale: np.ndarray, axis: int | None = None) -> str:
    """DequantizeLinear of a constant int8 weight; returns its output name."""
    out = f"{name}_dq"
    attrs = {} if axis is None else {"axis": axis}
    g.nodes.append(
        helper.make_node(
            "DequantizeLinear",
            [
                g.const(f"{name}.q", q),
                g.const(f"{name}.s", scale),
                g.const(f"{name}.zp", np.zeros_like(q, shape=scale.shape)),
            ],
            [out],
            name=f"{name}/DQ",
            **attrs,
        )
    )
    return out


def tensorrt_violations_model() -> onnx.ModelProto:
    """A valid QDQ graph breaking each TensorRT rule once, plus an op TensorRT's parser lacks (Hardmax):
    - '/in/Q', '/in/DQ': uint8 zero point 128 (asymmetric, unsigned);
    - 'conv1.w/DQ': weights quantized per tensor;
    - 'conv1.b/DQ': int32 bias behind a DequantizeLinear;
    - 'conv2.w/DQ': per-channel weights along axis 1 instead of the output-channel axis 0;
    - '/act/Q', '/act/DQ': per-channel activation scales.
    """
    g = Graph([1, 2, 4, 4])
    _qdq(g, "/in", np.float32(0.02), np.uint8(128))
    x = g.last
    w1 = _weight(g, "conv1.w", RNG.integers(-100, 100, (4, 2, 3, 3), dtype=np.int8), np.float32(0.01))
    b1 = "conv1.b_dq"
    g.nodes.append(
        helper.make_node(
            "DequantizeLinear",
            [g.const("conv1.b.q", np.zeros(4, np.int32)), g.const("conv1.b.s", np.float32(0.0002))],
            [b1],
            name="conv1.b/DQ",
        )
    )
    g.last = x
    g.add("Conv", w1, b1, name="/conv1/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    _qdq(g, "/act", np.full(4, 0.05, np.float32), np.zeros(4, np.int8), axis=1)
    act = g.last
    w2 = _weight(
        g,
        "conv2.w",
        RNG.integers(-100, 100, (4, 4, 3, 3), dtype=np.int8),
        np.full(4, 0.01, np.float32),
        axis=1,
    )
    g.last = act
    g.add(
        "Conv",
        w2,
        g.const("conv2.b", np.zeros(4, np.float32)),
        name="/conv2/Conv",
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
    )
    g.add("Hardmax", name="/head/Hardmax", axis=-1)
    return g.model([1, 4, 4, 4])


def opset12_qdq_model() -> onnx.ModelProto:
    g = Graph([1, 2, 4, 4], opset=12)
    _qdq(g, "/in", np.float32(0.02), np.int8(0))
    return g.model([1, 2, 4, 4])
