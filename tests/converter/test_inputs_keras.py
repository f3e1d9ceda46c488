"""Keras model files (.keras, .h5): exported to ONNX for the pipeline, and for TFLite profiles quantized
from the Keras model itself (real Keras/TensorFlow, real LiteRT and onnxruntime)."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.errors import ConversionError
from edgefleet.converter.pipeline import convert

# whole conversions or training runs: the full suite runs them, the fast lane (-m "not slow") does not
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keras_digits(tmp_path_factory: pytest.TempPathFactory, reference_dir: Path) -> dict[str, Path | float]:
    """A small Keras CNN trained on the digits in NHWC, saved as .keras and .h5, with NHWC data sets."""
    from edgefleet.converter.steps.onnx_to_keras import import_keras
    from edgefleet.reference_models.train_digits_cnn import load_splits

    keras = import_keras()
    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = (a.transpose(0, 2, 3, 1) if a.ndim == 4 else a for a in load_splits())
    inputs = keras.Input((8, 8, 1), name="digit")
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, name="scores")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0)
    out = tmp_path_factory.mktemp("keras")
    model.save(out / "digits.keras")
    model.save(out / "digits.h5")
    np.savez(out / "calib.npz", digit=x_train[:100])
    np.savez(out / "eval.npz", digit=x_test, y=y_test)
    keras_top1 = float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean() * 100)
    return {"dir": out, "top1": round(keras_top1, 2)}


def _request(
    make_request: Callable[..., ConversionRequest], data: dict, model: str, profile: str, **kw: object
):
    folder = data["dir"]
    return make_request(
        profile,
        model=folder / model,
        name="kdigits",
        calib=folder / "calib.npz",
        eval=folder / "eval.npz",
        **kw,
    )


def test_keras_file_to_full_int8_tflite(
    make_request: Callable[..., ConversionRequest], keras_digits: dict
) -> None:
    result = convert(_request(make_request, keras_digits, "digits.keras", "rpi4"))
    accuracy = result.metrics.accuracy
    assert (
        accuracy is not None and accuracy.fp32 == keras_digits["top1"]
    )  # the ONNX export is the Keras model
    assert accuracy.drop_points <= 2.0
    (image,) = result.inputs
    # NHWC in, NHWC out: the Keras model is its own TFLite twin, no transpose
    assert image.name == "digit" and image.dtype == "int8" and image.perm is None
    assert image.shape == [1, 8, 8, 1]
    assert [t.name for t in result.outputs] == ["scores"]


def test_h5_file_to_onnx_fp16(make_request: Callable[..., ConversionRequest], keras_digits: dict) -> None:
    result = convert(_request(make_request, keras_digits, "digits.h5", "jetson-nano"))
    accuracy = result.metrics.accuracy
    assert accuracy is not None and accuracy.fp32 == keras_digits["top1"]
    (image,) = result.inputs
    assert image.name == "digit" and image.dtype == "float32" and image.float_shape == [None, 8, 8, 1]
    with zipfile.ZipFile(result.bundle_path) as bundle:
        artifact = onnx.load_model_from_string(bundle.read("model.onnx"))
    weights = [numpy_helper.to_array(init) for init in artifact.graph.initializer]
    assert any(w.ndim == 4 for w in weights) and all(w.dtype == np.float16 for w in weights if w.ndim > 1)


def test_onnx_level_compression_of_a_keras_model_for_tflite_is_refused(
    make_request: Callable[..., ConversionRequest], keras_digits: dict
) -> None:
    with pytest.raises(ConversionError, match="a Keras model goes to TFLite directly"):
        convert(_request(make_request, keras_digits, "digits.keras", "rpi4", low_rank=0.9))
    with pytest.raises(ConversionError, match="channel pruning needs the PyTorch model"):
        convert(_request(make_request, keras_digits, "digits.keras", "jetson-nano", prune=0.5))


def test_unreadable_keras_file(make_request: Callable[..., ConversionRequest], tmp_path: Path) -> None:
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ConversionError, match="Keras cannot load it"):
        convert(make_request("jetson-nano", model=broken, name="broken"))
