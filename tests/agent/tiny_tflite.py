"""A tiny full-INT8 TFLite model built directly with the flatbuffer schema shipped in ai_edge_litert:
one FULLY_CONNECTED layer, int8 [N, 64] -> int8 [N, 10]. No TensorFlow needed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema


@dataclass(frozen=True)
class TinyInt8Model:
    path: Path
    weights: np.ndarray  # int8 [10, 64]
    bias: np.ndarray  # int32 [10]
    in_scale: float = 0.05
    in_zero_point: int = -3
    w_scale: float = 0.01
    out_scale: float = 0.2
    out_zero_point: int = 4

    def reference(self, q_in: np.ndarray) -> np.ndarray:
        """What the int8 kernel computes, in numpy (rounding may differ by one quantum)."""
        acc = (q_in.astype(np.int32) - self.in_zero_point) @ self.weights.astype(np.int32).T + self.bias
        real = acc * (self.in_scale * self.w_scale)
        return np.clip(np.round(real / self.out_scale) + self.out_zero_point, -128, 127).astype(np.int8)


def _quant(scale: float, zero_point: int) -> schema.QuantizationParametersT:
    q = schema.QuantizationParametersT()
    q.scale = [scale]
    q.zeroPoint = [zero_point]
    return q


def _tensor(
    name: str, shape: list[int], dtype: int, buffer: int, quant: schema.QuantizationParametersT
) -> object:
    t = schema.TensorT()
    t.name = name
    t.shape = [1 if d < 0 else d for d in shape]
    t.shapeSignature = shape
    t.type = dtype
    t.buffer = buffer
    t.quantization = quant
    return t


def _buffer(data: bytes | None = None) -> schema.BufferT:
    b = schema.BufferT()
    if data is not None:
        b.data = list(data)
    return b


def build_tiny_int8_model(path: Path, seed: int = 0, custom_op: str | None = None) -> TinyInt8Model:
    """`custom_op`: make the layer that custom op instead (e.g. "edgetpu-custom-op", as the Edge TPU
    compiler does): the model then loads only where a delegate implements it."""
    rng = np.random.default_rng(seed)
    weights = rng.integers(-127, 128, size=(10, 64), dtype=np.int8)
    bias = rng.integers(-500, 500, size=10).astype(np.int32)
    model = TinyInt8Model(path, weights, bias)

    tensors = [
        _tensor("x", [-1, 64], schema.TensorType.INT8, 1, _quant(model.in_scale, model.in_zero_point)),
        _tensor("w", [10, 64], schema.TensorType.INT8, 2, _quant(model.w_scale, 0)),
        _tensor("b", [10], schema.TensorType.INT32, 3, _quant(model.in_scale * model.w_scale, 0)),
        _tensor("y", [-1, 10], schema.TensorType.INT8, 0, _quant(model.out_scale, model.out_zero_point)),
    ]
    tensors[3].buffer = 4
    op = schema.OperatorT()
    op.opcodeIndex = 0
    op.inputs = [0, 1, 2]
    op.outputs = [3]
    op.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = schema.FullyConnectedOptionsT()
    subgraph = schema.SubGraphT()
    subgraph.tensors = tensors
    subgraph.inputs = [0]
    subgraph.outputs = [3]
    subgraph.operators = [op]
    subgraph.name = "main"
    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.FULLY_CONNECTED
    code.deprecatedBuiltinCode = schema.BuiltinOperator.FULLY_CONNECTED
    code.version = 4
    if custom_op is not None:
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
        code.customCode = custom_op
        code.version = 1
        op.builtinOptionsType = schema.BuiltinOptions.NONE
        op.builtinOptions = None
    root = schema.ModelT()
    root.version = 3
    root.operatorCodes = [code]
    root.subgraphs = [subgraph]
    root.description = "edgefleet test: tiny int8 fully connected"
    root.buffers = [_buffer(), _buffer(), _buffer(weights.tobytes()), _buffer(bias.tobytes()), _buffer()]
    builder = flatbuffers.Builder(4096)
    builder.Finish(root.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return model
