"""Drop fused activations that the output's int8 range already applies.

The TFLite converter fuses a ReLU into the op before it: into TRANSPOSE_CONV that makes version 4, which
edgetpu_compiler refuses (it takes up to 3), and pooling or CONCATENATION with a fused activation do not map
to the Edge TPU at all. After full-integer quantization a ReLU whose output range starts at 0 clamps nothing
the int8 saturation does not clamp already (zero point at the type's minimum): dropping it changes no output
value and takes the op back to a version and form the Edge TPU maps. Activations that do clamp stay.
"""

from __future__ import annotations

import numpy as np

from edgefleet.converter import litert_adapter
from edgefleet.converter.tflite_graph import enum_names

UNFUSED_OPS = {"TRANSPOSE_CONV", "AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"}
# the op version once no op of the kind has a fused activation: with a bias input, TRANSPOSE_CONV is v3
_TRANSPOSE_CONV_VERSION = {True: 3, False: 2}
_INT_RANGE = {"INT8": (-128, 127), "UINT8": (0, 255)}
# activation -> (lower, upper) bound it clamps to, in real values
_BOUNDS = {"RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0)}


def _inert(bounds: tuple[float, float | None], scale: float, zero_point: int, qmin: int, qmax: int) -> bool:
    """Whether clamping to `bounds` leaves every value of the quantized output's type as it is."""
    low, high = bounds
    if zero_point + round(low / scale) > qmin:
        return False
    return high is None or zero_point + round(high / scale) >= qmax


def unfuse_inert_activations(flatbuffer: bytes) -> tuple[bytes, int]:
    """The model with inert fused activations removed (see module doc), and how many were removed."""
    schema = litert_adapter.schema()
    names = enum_names(schema.BuiltinOperator)
    activations = enum_names(schema.ActivationFunctionType)
    types = enum_names(schema.TensorType)
    model = litert_adapter.read_model(flatbuffer)
    codes = model.operatorCodes
    removed = 0
    still_fused: set[int] = set()
    transpose_conv_bias: dict[int, bool] = {}
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = codes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            if name not in UNFUSED_OPS:
                continue
            if name == "TRANSPOSE_CONV":
                has_bias = len(op.inputs) > 3 and op.inputs[3] >= 0
                transpose_conv_bias[op.opcodeIndex] = (
                    transpose_conv_bias.get(op.opcodeIndex, False) or has_bias
                )
            options = op.builtinOptions
            activation = activations.get(getattr(options, "fusedActivationFunction", 0), "NONE")
            if activation == "NONE":
                continue
            output = subgraph.tensors[op.outputs[0]]
            quant = output.quantization
            bounds = _BOUNDS.get(activation)
            int_range = _INT_RANGE.get(types.get(output.type, ""))
            if (
                bounds is None
                or int_range is None
                or quant is None
                or quant.scale is None
                or len(quant.scale) != 1
                or not _inert(bounds, float(quant.scale[0]), int(np.asarray(quant.zeroPoint)[0]), *int_range)
            ):
                still_fused.add(op.opcodeIndex)
                continue
            options.fusedActivationFunction = schema.ActivationFunctionType.NONE
            removed += 1
    for index, has_bias in transpose_conv_bias.items():
        if index not in still_fused and codes[index].version > _TRANSPOSE_CONV_VERSION[has_bias]:
            codes[index].version = _TRANSPOSE_CONV_VERSION[has_bias]
    if not removed:
        return flatbuffer, 0
    return litert_adapter.write_model(model), removed
