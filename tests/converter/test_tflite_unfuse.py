"""Fused activations the int8 output range already applies are dropped, bit-exactly (TRANSPOSE_CONV v4 ->
v3, which edgetpu_compiler accepts); ones that clamp stay."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from edgefleet.converter.steps.onnx_to_keras import import_keras
from edgefleet.converter.steps.tflite_unfuse import _inert, unfuse_inert_activations
from edgefleet.converter.tflite_graph import fused_activation, read_tflite


def _upsampler_int8() -> bytes:
    keras = import_keras()
    import tensorflow as tf

    x = keras.Input((8, 8, 4), batch_size=1)
    up = keras.layers.Conv2DTranspose(6, 2, strides=2)
    y = up(x)
    up.set_weights([up.get_weights()[0], np.linspace(-1, 1, 6).astype(np.float32)])
    y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))  # BN folds into a bias, ReLU is fused
    y = keras.layers.ReLU()(keras.layers.MaxPooling2D()(y))
    rng = np.random.default_rng(0)

    def representative() -> object:
        for _ in range(8):
            yield [rng.random((1, 8, 8, 4), dtype=np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(x, y))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def _run(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])).copy()


def test_an_inert_relu_leaves_the_transpose_conv_at_a_version_the_edge_tpu_takes() -> None:
    fused = _upsampler_int8()
    before = {op.name: op for op in read_tflite(fused).ops}
    assert before["TRANSPOSE_CONV"].version == 4 and fused_activation(before["TRANSPOSE_CONV"]) == "RELU"
    unfused, removed = unfuse_inert_activations(fused)
    after = {op.name: op for op in read_tflite(unfused).ops}
    assert removed == 2  # the transposed convolution's and the pooling's
    assert after["TRANSPOSE_CONV"].version == 3 and fused_activation(after["TRANSPOSE_CONV"]) == "NONE"
    assert fused_activation(after["MAX_POOL_2D"]) == "NONE"
    x = np.random.default_rng(1).integers(-128, 128, (1, 8, 8, 4)).astype(np.int8)
    np.testing.assert_array_equal(_run(fused, x), _run(unfused, x))


@pytest.mark.parametrize(
    ("bounds", "scale", "zero_point", "inert"),
    [
        ((0.0, None), 0.05, -128, True),  # range starts at 0: saturation is the ReLU
        ((0.0, None), 0.05, -100, False),  # range reaches below 0: the ReLU clamps
        ((0.0, 6.0), 6 / 255, -128, True),
        ((0.0, 6.0), 0.05, -128, False),  # range reaches above 6: RELU6 clamps
    ],
)
def test_an_activation_that_clamps_stays(
    bounds: tuple[float, float | None], scale: float, zero_point: int, inert: bool
) -> None:
    assert _inert(bounds, scale, zero_point, -128, 127) is inert
