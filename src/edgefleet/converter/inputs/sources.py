"""Pipeline steps that turn a non-ONNX source into the fp32 ONNX model the rest of the pipeline reads
(`ctx.request.model` then names that file), and image folders into .npz tensor sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from edgefleet.contract.profiles import ArtifactFormat
from edgefleet.converter.context import ConversionContext, ConversionRequest, Step
from edgefleet.converter.errors import InputDataError, ModelError
from edgefleet.converter.inputs.images import load_image_folder
from edgefleet.converter.inputs.keras import is_keras_file
from edgefleet.converter.inputs.pytorch import is_factory_spec

SourceKind = Literal["onnx", "keras", "pytorch"]
SOURCE_ONNX = "source.onnx"
DATA_FIELDS = (("calib", "calibration"), ("eval", "evaluation"), ("train", "training"))


def source_kind(model: Path, has_module: bool) -> SourceKind:
    if has_module or is_factory_spec(model):
        return "pytorch"
    return "keras" if is_keras_file(model) else "onnx"


def use_fp32_model(ctx: ConversionContext, path: Path) -> None:
    """Make `path` the fp32 ONNX model every later step reads, loaded and shape-resolved as LoadOnnx does."""
    from edgefleet.converter.steps.load_onnx import LoadOnnx

    ctx.request = ctx.request.model_copy(update={"model": path})
    LoadOnnx().run(ctx)


def export_shapes(request: ConversionRequest, where: str) -> dict[str, list[int]]:
    """--input-shape for a PyTorch export: every dim given; a dynamic batch ('?') is traced with 1."""
    from edgefleet.converter.inputs.pytorch import check_input_shapes

    shapes: dict[str, list[int]] = {}
    for name, dims in request.input_shapes.items():
        if any(d is None for d in dims[1:]):
            raise ModelError(
                f"{where}: --input-shape {name} leaves a non-batch dimension open {list(dims)}; a PyTorch "
                "model is traced at one concrete shape"
            )
        batch = 1 if not dims or dims[0] is None else dims[0]
        shapes[name] = [batch, *(d for d in dims[1:] if d is not None)]
    return check_input_shapes(where, shapes)


class ExportPyTorch:
    """nn.Module (given, or built by `package.module:factory`) -> fp32 ONNX, explicit opset."""

    name = "export pytorch model to onnx"

    def run(self, ctx: ConversionContext) -> None:
        from edgefleet.converter.inputs.pytorch import export_module, load_factory, require_compress_extra

        where = f"model '{ctx.request.model}'"
        require_compress_extra(("torch",), f"{where} (a PyTorch model)")
        shapes = export_shapes(ctx.request, where)
        if ctx.torch_module is None:
            ctx.torch_module = load_factory(str(ctx.request.model))
        path = ctx.work_dir / SOURCE_ONNX
        export_module(ctx.torch_module, shapes, path, ctx.request.opset)
        ctx.request = ctx.request.model_copy(update={"model": path})


class ExportKeras:
    """.keras/.h5 -> fp32 ONNX (NHWC inputs), and for TFLite profiles the Keras model itself as the twin
    the TFLite converter quantizes (so OnnxToKeras does not run)."""

    name = "export keras model to onnx"

    def run(self, ctx: ConversionContext) -> None:
        from edgefleet.converter.inputs.keras import (
            batch_one_twin,
            export_keras_onnx,
            input_specs,
            load_keras_model,
        )

        source = ctx.request.model
        model = load_keras_model(source)
        specs = input_specs(model, ctx.request.input_shapes, f"model {source}")  # type: ignore[arg-type]
        path = ctx.work_dir / SOURCE_ONNX
        export_keras_onnx(model, specs, path, ctx.request.opset)
        if ctx.profile.artifact.format is ArtifactFormat.TFLITE:
            from edgefleet.converter.steps.onnx_to_keras import KerasTranslation

            ctx.keras_model = KerasTranslation(
                model=batch_one_twin(model, specs),
                input_perms={name: None for name, _ in specs},  # Keras is NHWC already: no transposes
                output_perms={name: None for name in _output_names(path)},
            )
        ctx.request = ctx.request.model_copy(update={"model": path})


def _output_names(path: Path) -> list[str]:
    import onnx

    return [value.name for value in onnx.load(str(path), load_external_data=False).graph.output]


class ReadImageFolders:
    """Every data path that is a folder of images becomes an .npz (model input + labels `y`) in the work
    directory, so the usual loaders check it like any other tensor set."""

    name = "read image folders"

    def run(self, ctx: ConversionContext) -> None:
        info = ctx.need(ctx.model_info, "the model description")
        folders = {
            field: path
            for field, _ in DATA_FIELDS
            if (path := getattr(ctx.request, field)) is not None and Path(path).is_dir()
        }
        if not folders:
            return
        if len(info.inputs) != 1:
            raise InputDataError(
                "image folders feed single-input models; this model has inputs "
                f"{[t.name for t in info.inputs]} - pass .npz files with one array per input"
            )
        tensor = info.inputs[0]
        roles = dict(DATA_FIELDS)
        classes: dict[str, list[str]] = {}
        updates: dict[str, Path] = {}
        for field, folder in folders.items():
            images = load_image_folder(Path(folder), list(tensor.shape), ctx.request.images, roles[field])
            arrays = {tensor.name: images.inputs}
            if images.labels is not None:
                arrays["y"] = images.labels
                if images.class_names is not None and not all(n.isdigit() for n in images.class_names):
                    classes[f"{roles[field]} folder {folder}"] = images.class_names
            out = ctx.work_dir / f"{field}_images.npz"
            np.savez(out, **arrays)  # type: ignore[arg-type]
            updates[field] = out
        if len({tuple(names) for names in classes.values()}) > 1:
            listing = "; ".join(f"{where}: {names}" for where, names in classes.items())
            raise InputDataError(
                f"class folders differ ({listing}); labels are indices into the sorted class names, so every "
                "image folder must hold the same class folders (or name them by class index: 0/, 1/, ...)"
            )
        ctx.request = ctx.request.model_copy(update=updates)


def source_steps(request: ConversionRequest, has_module: bool) -> list[Step]:
    """Steps before LoadOnnx that produce the fp32 ONNX model from the request's source."""
    kind = source_kind(request.model, has_module)
    if kind == "pytorch":
        return [ExportPyTorch()]
    if kind == "keras":
        return [ExportKeras()]
    return []


def data_steps(request: ConversionRequest) -> list[Step]:
    """Steps between LoadOnnx and LoadCalibration that turn image folders into tensor sets."""
    paths = [getattr(request, field) for field, _ in DATA_FIELDS]
    return [ReadImageFolders()] if any(p is not None and Path(p).is_dir() for p in paths) else []


def default_name(model: Path) -> str:
    """The bundle name when --name is not given: the file's stem, or a factory's function name."""
    from edgefleet.converter.inputs.pytorch import factory_name

    return factory_name(str(model)) if is_factory_spec(model) else model.stem
