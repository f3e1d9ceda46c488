"""Read a .tflite flatbuffer into plain records (ops in execution order, tensors, versions) for the target
checks, with the schema that ships in ai-edge-litert (no TensorFlow import).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.converter import litert_adapter


@dataclass(frozen=True)
class TfliteTensor:
    index: int
    name: str
    dtype: str  # numpy-style name: int8, uint8, int32, float32, ...
    shape: tuple[int, ...]
    signature: tuple[int, ...]  # shape_signature: -1 marks a dynamic dimension
    constant: bool  # backed by a buffer with data (weights, bias, shape operands)


@dataclass(frozen=True)
class TfliteOp:
    index: int  # position in the subgraph's operator list, which is the execution order
    name: str  # builtin operator name (CONV_2D) or custom code (edgetpu-custom-op)
    version: int
    inputs: tuple[int, ...]  # tensor indices; -1 = optional operand left out
    outputs: tuple[int, ...]
    options: Any  # the op's *OptionsT object from the schema, or None


@dataclass(frozen=True)
class TfliteGraph:
    subgraphs: int
    ops: list[TfliteOp]  # of the main subgraph
    tensors: list[TfliteTensor]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def layer(self, op: TfliteOp) -> str:
        """A name for the op in reports: its first output tensor (TFLite ops carry no names)."""
        return self.tensors[op.outputs[0]].name if op.outputs else f"op {op.index}"


_TYPE_NAMES = {
    "FLOAT32": "float32",
    "FLOAT16": "float16",
    "FLOAT64": "float64",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT16": "int16",
    "UINT16": "uint16",
    "INT32": "int32",
    "UINT32": "uint32",
    "INT64": "int64",
    "UINT64": "uint64",
    "INT4": "int4",
    "BOOL": "bool",
    "STRING": "string",
}


def enum_names(enum_class: Any) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


def fused_activation(op: TfliteOp) -> str | None:
    """NONE/RELU/RELU6/... for ops whose options carry a fused activation; None for the others."""
    schema = litert_adapter.schema()
    code = getattr(op.options, "fusedActivationFunction", None)
    return None if code is None else enum_names(schema.ActivationFunctionType)[code]


def read_tflite(source: Path | bytes) -> TfliteGraph:
    schema = litert_adapter.schema()
    data = source.read_bytes() if isinstance(source, Path) else source
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    builtin_names = enum_names(schema.BuiltinOperator)
    type_names = enum_names(schema.TensorType)
    subgraph = model.subgraphs[0]

    def has_data(buffer_index: int) -> bool:
        buffer = model.buffers[buffer_index] if 0 < buffer_index < len(model.buffers) else None
        return buffer is not None and (
            (buffer.data is not None and len(buffer.data) > 0) or buffer.offset > 1
        )

    tensors = []
    for index, tensor in enumerate(subgraph.tensors):
        shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else []))
        signature = tensor.shapeSignature if tensor.shapeSignature is not None else shape
        type_name = type_names.get(tensor.type, str(tensor.type))
        tensors.append(
            TfliteTensor(
                index=index,
                name=(tensor.name or b"").decode(errors="replace"),
                dtype=_TYPE_NAMES.get(type_name, type_name.lower()),
                shape=shape,
                signature=tuple(int(d) for d in signature),
                constant=has_data(tensor.buffer),
            )
        )
    ops = []
    for index, op in enumerate(subgraph.operators or []):
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = builtin_names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            name = (code.customCode or b"").decode(errors="replace") or "CUSTOM"
        ops.append(
            TfliteOp(
                index=index,
                name=name,
                version=int(code.version),
                inputs=tuple(int(i) for i in (op.inputs if op.inputs is not None else [])),
                outputs=tuple(int(i) for i in (op.outputs if op.outputs is not None else [])),
                options=op.builtinOptions,
            )
        )
    return TfliteGraph(
        subgraphs=len(model.subgraphs),
        ops=ops,
        tensors=tensors,
        inputs=tuple(int(i) for i in subgraph.inputs),
        outputs=tuple(int(i) for i in subgraph.outputs),
    )
