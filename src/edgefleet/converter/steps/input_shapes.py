"""Fix a model's dynamic input dimensions before conversion: first the user's `--input-shape`, then the
profile's batch; a target that needs static shapes (TFLite, the Edge TPU) refuses any dimension still
dynamic with the input, the axis and the flag that fixes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edgefleet.contract.manifest import Dim
from edgefleet.contract.profiles import ArtifactFormat, DeviceProfile
from edgefleet.converter.errors import ConversionError, UnsupportedModelError
from edgefleet.converter.steps.load_onnx import ModelInfo, describe_model

DYNAMIC_MARKS = ("?", "-1")
_FLAG_FORM = "write NAME=D1,D2,... with positive integers (? keeps a dimension dynamic)"


def parse_input_shape(text: str) -> tuple[str, tuple[Dim, ...]]:
    """'image=1,3,96,96' -> ('image', (1, 3, 96, 96)); '?' or '-1' leaves a dimension dynamic (None)."""
    name, sep, dims_text = text.partition("=")
    if not sep or not name.strip() or not dims_text.strip():
        raise ConversionError(f"--input-shape {text!r}: {_FLAG_FORM}")
    dims: list[Dim] = []
    for part in dims_text.split(","):
        part = part.strip()
        if part in DYNAMIC_MARKS:
            dims.append(None)
        elif re.fullmatch(r"[0-9]+", part) and int(part) > 0:
            dims.append(int(part))
        else:
            raise ConversionError(f"--input-shape {text!r}: {part!r} is not a dimension; {_FLAG_FORM}")
    return name.strip(), tuple(dims)


def parse_input_shapes(texts: list[str] | None) -> dict[str, tuple[Dim, ...]]:
    shapes: dict[str, tuple[Dim, ...]] = {}
    for text in texts or []:
        name, dims = parse_input_shape(text)
        if name in shapes:
            raise ConversionError(f"--input-shape names input '{name}' twice; pass each input once")
        shapes[name] = dims
    return shapes


def _fmt(dims: Any) -> str:
    return "(" + ",".join("?" if d is None else str(d) for d in dims) + ")"


@dataclass(frozen=True)
class ResolvedShapes:
    model: Any  # onnx.ModelProto: the model the artifact is built from (overrides and profile batch applied)
    float_info: ModelInfo  # the float form clients send: the user's overrides, the source's dynamic batch


def _graph_inputs(model: Any) -> list[Any]:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _set_dims(model: Any, fixed: dict[str, dict[int, int]]) -> None:
    """Write fixed sizes into the inputs; a named dynamic dim (dim_param, e.g. 'batch') takes the same
    size wherever else it appears (other inputs, outputs, value_info): the name says they are one size."""
    by_param: dict[str, int] = {}
    for value in _graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        for axis, size in fixed.get(value.name, {}).items():
            if dims[axis].dim_param:
                by_param[dims[axis].dim_param] = size
            dims[axis].Clear()
            dims[axis].dim_value = size
    for value in [*_graph_inputs(model), *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in by_param:
                size = by_param[dim.dim_param]
                dim.Clear()
                dim.dim_value = size


def _apply_overrides(model: Any, info: ModelInfo, overrides: dict[str, tuple[Dim, ...]]) -> None:
    inputs = {tensor.name: tensor for tensor in info.inputs}
    unknown = sorted(set(overrides) - set(inputs))
    if unknown:
        raise ConversionError(
            f"--input-shape names {unknown}, but the model's inputs are {sorted(inputs)}; use those names"
        )
    fixed: dict[str, dict[int, int]] = {}
    for name, dims in overrides.items():
        declared = inputs[name].shape
        flag = f"--input-shape {name}={','.join('?' if d is None else str(d) for d in dims)}"
        if len(dims) != len(declared):
            raise ConversionError(
                f"{flag}: input '{name}' has {len(declared)} dimensions {_fmt(declared)}, the flag gives "
                f"{len(dims)}; give one size per dimension"
            )
        for axis, (want, have) in enumerate(zip(dims, declared, strict=True)):
            if want is not None and want <= 0:
                raise ConversionError(f"{flag}: axis {axis} must be a positive size")
            if want is None or want == have:
                continue
            if have is not None:
                raise ConversionError(
                    f"{flag}: input '{name}' axis {axis} is fixed at {have} in the model {_fmt(declared)}; "
                    "only dynamic dimensions can be set"
                )
            if axis == 0 and want != 1:
                raise ConversionError(
                    f"{flag}: a fixed batch of {want} is not supported (calibration and evaluation run "
                    "sample by sample or in free batches); use 1, or ? to keep the batch dynamic"
                )
            fixed.setdefault(name, {})[axis] = want
    _set_dims(model, fixed)


def _dynamic_dims(model: Any) -> list[tuple[str, int, str]]:
    """(input, axis, dim name) for every dimension still dynamic."""
    found = []
    for value in _graph_inputs(model):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not (dim.HasField("dim_value") and dim.dim_value > 0):
                found.append((value.name, axis, dim.dim_param))
    return found


def _suggestion(model: Any, name: str) -> str:
    value = next(v for v in _graph_inputs(model) if v.name == name)
    parts = []
    for axis, dim in enumerate(value.type.tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            parts.append(str(dim.dim_value))
        else:
            parts.append("1" if axis == 0 else (dim.dim_param or f"D{axis}").upper())
    return f"--input-shape {name}={','.join(parts)}"


def resolve_input_shapes(
    model: Any, info: ModelInfo, overrides: dict[str, tuple[Dim, ...]], profile: DeviceProfile
) -> ResolvedShapes:
    """The model with the user's and the profile's fixes applied, and the float form clients will send."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    if overrides:
        _apply_overrides(fixed, info, overrides)
    float_info = describe_model(fixed, info.path)
    needs_static = profile.artifact.format is ArtifactFormat.TFLITE
    batch = 1 if needs_static else profile.artifact.batch
    if batch is not None:
        _set_dims(fixed, {name: {0: batch} for name, axis, _ in _dynamic_dims(fixed) if axis == 0})
    if needs_static:
        dynamic = _dynamic_dims(fixed)
        if dynamic:
            where = "; ".join(
                f"input '{name}' axis {axis}" + (f" ('{param}')" if param else "")
                for name, axis, param in dynamic
            )
            fixes = " ".join(sorted({_suggestion(fixed, name) for name, _, _ in dynamic}))
            raise UnsupportedModelError(
                f"model {info.path}: {where} is dynamic; profile '{profile.name}' builds a "
                f"{profile.artifact.format.value} artifact, which needs static shapes: fix it with {fixes} "
                "(the size the device will feed)"
            )
    return ResolvedShapes(model=fixed, float_info=float_info)
