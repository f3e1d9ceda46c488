"""Full-INT8 TFLite from the Keras twin: static post-training quantization with a representative dataset,
int8 weights and activations, int32 bias, int8/uint8 I/O as the profile says, static shapes, one subgraph.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from edgefleet.converter.context import ConversionContext
from edgefleet.converter.errors import ConversionError
from edgefleet.converter.steps.onnx_to_keras import import_keras

# int32 is allowed only where full-INT8 kernels take it: the bias of conv/FC ops and RESHAPE's shape.
_INT32_OPERANDS = {
    "CONV_2D": {2},
    "DEPTHWISE_CONV_2D": {2},
    "FULLY_CONNECTED": {2},
    "TRANSPOSE_CONV": {0, 3},
    "RESHAPE": {1},
    "PAD": {1},
    "MEAN": {1},
}


def full_int8_violations(path: Path) -> list[str]:
    """Everything that keeps a .tflite from being full-INT8 with static shapes (empty list: clean)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    problems = []
    if interpreter.num_subgraphs() != 1:
        problems.append(f"{interpreter.num_subgraphs()} subgraphs (want 1)")
    allowed_int32: set[int] = set()
    for op in interpreter._get_ops_details():
        for position in _INT32_OPERANDS.get(op["op_name"], set()):
            if position < len(op["inputs"]):
                allowed_int32.add(int(op["inputs"][position]))
    for tensor in interpreter.get_tensor_details():
        dtype = np.dtype(tensor["dtype"])
        if dtype == np.int32 and tensor["index"] in allowed_int32:
            continue
        if dtype not in (np.int8, np.uint8):
            problems.append(f"tensor '{tensor['name']}' is {dtype.name}")
        if len(tensor["shape_signature"]) and (np.asarray(tensor["shape_signature"]) < 0).any():
            problems.append(
                f"tensor '{tensor['name']}' has a dynamic shape {list(tensor['shape_signature'])}"
            )
    return problems


def name_io_tensors(flatbuffer: bytes, input_names: list[str], output_names: list[str]) -> bytes:
    """Rename the model's input/output tensors (and serving-signature keys) to the source model's names.

    The converter calls them 'serving_default_image:0' / 'StatefulPartitionedCall:0'; with the ONNX names
    the artifact, the manifest and a client's request all use one name per tensor. Keras keeps the input
    order, and names outputs output_0, output_1, ... in order, which gives the mapping.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    subgraph = model.subgraphs[0]
    signature = model.signatureDefs[0] if model.signatureDefs else None
    inputs = [m.tensorIndex for m in signature.inputs] if signature else list(subgraph.inputs)
    outputs = (
        [m.tensorIndex for m in sorted(signature.outputs, key=lambda m: int(m.name.rsplit(b"_", 1)[1]))]
        if signature
        else list(subgraph.outputs)
    )
    if len(inputs) != len(input_names) or len(outputs) != len(output_names):
        raise ConversionError(
            f"the TFLite model has {len(inputs)} inputs/{len(outputs)} outputs, the source model "
            f"{len(input_names)}/{len(output_names)}"
        )
    renames = dict(zip(inputs, input_names, strict=True)) | dict(zip(outputs, output_names, strict=True))
    for index, name in renames.items():
        subgraph.tensors[index].name = name.encode()
    if signature:
        for entry in [*signature.inputs, *signature.outputs]:
            entry.name = renames[entry.tensorIndex].encode()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


class QuantizeTflite:
    """tf.lite.TFLiteConverter on the Keras twin, fed NHWC calibration samples one at a time (batch 1)."""

    name = "quantize tflite (full int8)"

    def __init__(self, io_dtype: Literal["int8", "uint8"]) -> None:
        self.io_dtype = io_dtype

    def run(self, ctx: ConversionContext) -> None:
        import_keras()  # the Keras twin and TensorFlow must agree on the backend
        import tensorflow as tf

        translation = ctx.need(ctx.keras_model, "the Keras model")
        calib = ctx.need(ctx.calib, "calibration data")
        names = [t.name for t in ctx.need(ctx.model_info, "model description").inputs]

        def representative() -> Iterator[list[np.ndarray]]:
            for index in range(calib.samples):
                sample = []
                for name in names:
                    x = calib.inputs[name][index : index + 1]
                    perm = translation.input_perms[name]
                    sample.append(x if perm is None else np.ascontiguousarray(np.transpose(x, perm)))
                yield sample

        converter = tf.lite.TFLiteConverter.from_keras_model(translation.model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = tf.int8 if self.io_dtype == "int8" else tf.uint8
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
        # The converter prints its SavedModel export to stdout; keep the CLI output readable.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                flatbuffer = converter.convert()
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConversionError(
                    f"TFLite full-INT8 conversion failed ({first}); the model may use an op without an "
                    "INT8 TFLite kernel - choose an ONNX profile for it"
                ) from exc
        info = ctx.need(ctx.model_info, "model description")
        out = ctx.work_dir / "model.tflite"
        out.write_bytes(name_io_tensors(flatbuffer, names, [t.name for t in info.outputs]))
        problems = full_int8_violations(out)
        if problems:
            raise ConversionError(
                f"the TFLite model is not full-INT8 with static shapes: {'; '.join(problems[:5])}"
            )
        ctx.artifact_path = out
