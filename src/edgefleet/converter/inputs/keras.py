"""Keras model files (.keras, .h5) as conversion input.

Two forms come out of one file: an fp32 ONNX graph (Keras' own exporter, tf2onnx underneath), which the
rest of the pipeline measures and the ONNX targets quantize, and - for TFLite targets - the Keras model
itself with its batch fixed to 1, which the TFLite converter quantizes directly (no ONNX round trip).
Keras layers are NHWC, so the ONNX model's inputs are NHWC too and the calibration data is NHWC.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

from edgefleet.converter.errors import ModelError, first_line

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
DEFAULT_OPSET = 17


def is_keras_file(model: Path) -> bool:
    return model.suffix.lower() in KERAS_SUFFIXES


def load_keras_model(path: Path) -> Any:
    from edgefleet.converter.steps.onnx_to_keras import import_keras

    keras = import_keras()
    if not path.is_file():
        raise ModelError(f"model {path}: no such file; pass a .keras or .h5 model file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        first = first_line(exc)
        raise ModelError(
            f"model {path}: Keras cannot load it ({first}); models with custom layers need them registered "
            "(keras.saving.register_keras_serializable) in an importable module"
        ) from exc
    if not isinstance(model, keras.Model) or not model.inputs:
        raise ModelError(f"model {path}: not a Keras functional or Sequential model with declared inputs")
    return model


def input_specs(
    model: Any, input_shapes: dict[str, list[int]] | None, where: str
) -> list[tuple[str, list[int | None]]]:
    """(name, shape with batch None) per model input; --input-shape fills dims the model leaves open."""
    from edgefleet.converter.steps.onnx_to_keras import keras_safe_name

    specs = []
    given = input_shapes or {}
    for tensor in model.inputs:
        name = keras_safe_name(tensor.name)
        shape: list[int | None] = list(tensor.shape)
        if name in given:
            wanted = given[name]
            if len(wanted) != len(shape) or any(
                d is not None and d != w for d, w in zip(shape[1:], wanted[1:], strict=True)
            ):
                raise ModelError(
                    f"{where}: --input-shape {name}={wanted} does not fit the model input {shape}"
                )
            shape = [None, *wanted[1:]]
        if any(d is None for d in shape[1:]):
            raise ModelError(
                f"{where}: input '{name}' has open dimensions {shape}; pass --input-shape {name}=1,H,W,C"
            )
        specs.append((name, [None, *shape[1:]]))
    return specs


def _rename_outputs(onnx_model: Any, names: list[str]) -> None:
    """tf2onnx calls the outputs 'Identity:0', ...; give them the Keras output names."""
    graph = onnx_model.graph
    renames = {value.name: new for value, new in zip(graph.output, names, strict=True) if value.name != new}
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for value in graph.output:
        if value.name in renames:
            value.name = renames[value.name]
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].dim_value:
            dims[0].dim_param = "batch"
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].dim_value:
            dims[0].dim_param = "batch"


def export_keras_onnx(
    model: Any, specs: list[tuple[str, list[int | None]]], path: Path, opset: int = DEFAULT_OPSET
) -> None:
    """fp32 ONNX of `model` with dynamic batch, inputs named as in `specs` and outputs as in Keras."""
    import onnx
    import tensorflow as tf

    from edgefleet.converter.steps.onnx_to_keras import keras_safe_name

    signature = [tf.TensorSpec(shape, tf.float32, name=name) for name, shape in specs]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            model.export(
                str(path), format="onnx", input_signature=signature, opset_version=opset, verbose=False
            )
        except Exception as exc:
            first = first_line(exc)
            raise ModelError(f"Keras -> ONNX export failed ({first})") from exc
    exported = onnx.load(str(path))
    _rename_outputs(exported, [keras_safe_name(n) for n in model.output_names])
    onnx.checker.check_model(exported)
    onnx.save(exported, str(path))


def batch_one_twin(model: Any, specs: list[tuple[str, list[int | None]]]) -> Any:
    """The same model (shared weights) behind inputs with batch 1: the TFLite converter then emits static
    shapes, which full-INT8 targets (the Edge TPU above all) require."""
    from edgefleet.converter.steps.onnx_to_keras import import_keras

    keras = import_keras()
    inputs = [keras.Input(batch_shape=(1, *shape[1:]), name=name) for name, shape in specs]
    outputs = model(inputs[0] if len(inputs) == 1 else inputs)
    return keras.Model(inputs, outputs)
