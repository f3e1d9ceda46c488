"""Describe the artifact's inputs and outputs as manifest TensorSpecs: its own dtype, shape and
quantization, and how it relates to the source model's float tensor (float_shape, perm).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.contract.manifest import Dim, QuantParams, TensorSpec
from edgefleet.converter.context import ConversionContext
from edgefleet.converter.errors import ConversionError
from edgefleet.converter.steps.load_onnx import ModelInfo, TensorInfo, describe_model


def _match_by_order(what: str, artifact_count: int, source: list[TensorInfo]) -> None:
    if artifact_count != len(source):
        raise ConversionError(f"the artifact has {artifact_count} {what}, the source model {len(source)}")


def onnx_tensor_specs(path: Path, source: ModelInfo) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnx

    artifact = describe_model(onnx.load(str(path), load_external_data=False), path)
    specs = []
    for what, own, src in (
        ("inputs", artifact.inputs, source.inputs),
        ("outputs", artifact.outputs, source.outputs),
    ):
        _match_by_order(what, len(own), src)
        specs.append(
            [
                TensorSpec(name=a.name, dtype=a.dtype, shape=a.shape, float_shape=s.shape, perm=None)  # type: ignore[arg-type]
                for a, s in zip(own, src, strict=True)
            ]
        )
    return specs[0], specs[1]


def _tflite_spec(detail: dict[str, Any], source: TensorInfo, perm: list[int] | None) -> TensorSpec:
    scale, zero_point = detail["quantization"]
    quant = QuantParams(scale=float(scale), zero_point=int(zero_point)) if scale > 0 else None
    shape: list[Dim] = [int(d) if d >= 0 else None for d in detail["shape_signature"]]
    return TensorSpec(
        name=source.name,
        dtype=np.dtype(detail["dtype"]).name,
        shape=shape,
        quantization=quant,
        float_shape=source.shape,
        perm=perm,
    )


def tflite_tensor_specs(
    path: Path,
    source: ModelInfo,
    input_perms: dict[str, list[int] | None],
    output_perms: dict[str, list[int] | None],
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Specs in the artifact's own input/output order. QuantizeTflite named the TFLite I/O tensors after
    the source model's tensors, so each artifact tensor finds its float counterpart by name."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    specs = []
    for what, details, src, perms in (
        ("inputs", interpreter.get_input_details(), source.inputs, input_perms),
        ("outputs", interpreter.get_output_details(), source.outputs, output_perms),
    ):
        _match_by_order(what, len(details), src)
        by_name = {t.name: t for t in src}
        missing = [d["name"] for d in details if d["name"] not in by_name]
        if missing:
            raise ConversionError(f"TFLite {what} {missing} are not named after the source model's {what}")
        specs.append([_tflite_spec(d, by_name[d["name"]], perms[d["name"]]) for d in details])
    return specs[0], specs[1]


class DescribeArtifact:
    """Fill ctx.inputs/outputs from the artifact itself (never from assumptions about the converter)."""

    name = "describe artifact i/o"

    def run(self, ctx: ConversionContext) -> None:
        path = ctx.need(ctx.artifact_path, "the artifact")
        info = ctx.need(ctx.model_info, "model description")
        if path.suffix == ".tflite":
            translation = ctx.need(ctx.keras_model, "the Keras translation")
            ctx.inputs, ctx.outputs = tflite_tensor_specs(
                path, info, translation.input_perms, translation.output_perms
            )
        else:
            ctx.inputs, ctx.outputs = onnx_tensor_specs(path, info)
