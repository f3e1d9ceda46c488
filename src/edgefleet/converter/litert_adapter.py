"""The TensorFlow Lite / LiteRT internals the converter relies on, in one place. None of these is a stable
public API: `TFLiteConverter._experimental_calibrate_only`, `tensorflow.lite.python.convert.mlir_quantize`,
`tensorflow.lite.tools.flatbuffer_utils` and LiteRT's generated flatbuffer schema. When a TensorFlow or
LiteRT upgrade moves one of them, this module is what changes (the versions are pinned in pyproject.toml).

Calibration and quantization are two calls on purpose: the calibrated float model records every
activation range once; quantizing it with other settings (int8 or uint8 I/O, layers kept in float) does not
run the calibration data again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import numpy as np


def schema() -> Any:
    """LiteRT's generated flatbuffer schema module (ModelT, BuiltinOperator, TensorType, ...)."""
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def read_model(flatbuffer: bytes) -> Any:
    """A .tflite flatbuffer as the schema's mutable object tree (schema().ModelT)."""
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))


def write_model(model: Any) -> bytes:
    """The object tree of read_model, packed into a .tflite flatbuffer again."""
    from tensorflow.lite.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def calibrate(keras_model: Any, representative: Callable[[], Iterator[dict[str, np.ndarray]]]) -> bytes:
    """The Keras model as a float TFLite model with the ranges of every activation over `representative`
    recorded, for full-int8 quantization (calibrate-only mode of the MLIR converter)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter._experimental_calibrate_only = True
    return bytes(converter.convert())


IoType = Literal["int8", "uint8", "float32"]


def quantize(calibrated: bytes, input_type: IoType, output_type: IoType, float_ops: Iterable[str]) -> bytes:
    """The calibrated model quantized to int8, with the given I/O types; ops whose output tensor is named in
    `float_ops` stay in float."""
    import tensorflow as tf
    from tensorflow.lite.python.convert import mlir_quantize

    types = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}
    denylisted = list(float_ops)
    return bytes(
        mlir_quantize(
            calibrated,
            input_data_type=types[input_type],
            output_data_type=types[output_type],
            denylisted_nodes=denylisted or None,
        )
    )
