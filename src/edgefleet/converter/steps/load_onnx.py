"""Load and check the source fp32 ONNX model and describe its inputs and outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgefleet.contract.manifest import Dim
from edgefleet.converter.context import ConversionContext
from edgefleet.converter.errors import ModelError, first_line


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy dtype name
    shape: list[Dim]  # None for dynamic dims


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    opset: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]


def _tensor_info(value) -> TensorInfo:
    import onnx

    tensor_type = value.type.tensor_type
    dims: list[Dim] = [
        dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
        for dim in tensor_type.shape.dim
    ]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    return TensorInfo(name=value.name, dtype=dtype, shape=dims)


def describe_model(model, path: Path) -> ModelInfo:
    initializers = {init.name for init in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inputs = [_tensor_info(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_tensor_info(v) for v in model.graph.output]
    return ModelInfo(path=path, opset=opset, inputs=inputs, outputs=outputs)


def load_onnx_model(path: Path):
    """The checked model; ModelError (with what to do) for anything that is not a usable fp32 ONNX file."""
    import onnx

    if not path.is_file():
        raise ModelError(f"model {path}: no such file; pass the path of an fp32 .onnx model")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        first = first_line(exc)
        raise ModelError(
            f"model {path}: not a valid ONNX model ({first}); export it again (e.g. torch.onnx.export)"
        ) from exc
    info = describe_model(model, path)
    if not info.inputs or not info.outputs:
        raise ModelError(f"model {path}: the graph has no inputs or no outputs")
    for tensor in [*info.inputs, *info.outputs]:
        if tensor.dtype != "float32":
            raise ModelError(
                f"model {path}: tensor '{tensor.name}' is {tensor.dtype}; the converter takes fp32 models "
                "with float32 inputs and outputs"
            )
    return model, info


class LoadOnnx:
    """Load the source model named by the request, fix its dynamic input dimensions (`--input-shape`, the
    profile's batch) and record what its inputs and outputs look like in float form."""

    name = "load model"

    def run(self, ctx: ConversionContext) -> None:
        from edgefleet.converter.steps.input_shapes import resolve_input_shapes

        model, info = load_onnx_model(ctx.request.model)
        resolved = resolve_input_shapes(model, info, ctx.request.input_shapes, ctx.profile)
        ctx.model, ctx.model_info = resolved.model, resolved.float_info
