"""Full-INT8 TFLite from the Keras twin: static post-training quantization with a representative dataset,
int8 weights and activations, int32 bias, int8/uint8 I/O as the profile says, static shapes, one subgraph.

Calibration and quantization are two passes (as in TensorFlow's QuantizationDebugger): the calibrated float
model records every activation range, the calibration method may rewrite those ranges, and the MLIR
quantizer turns them into scales - keeping in float any op that mixed precision asked for.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from edgefleet.converter import litert_adapter
from edgefleet.converter.context import CalibrationMethod, ConversionContext
from edgefleet.converter.errors import ConversionError, first_line
from edgefleet.converter.shared_work import model_key
from edgefleet.converter.steps.calibration_ranges import rewrite_tflite_ranges
from edgefleet.converter.steps.onnx_to_keras import (
    KerasTranslation,
    import_keras,
    keras_input_order,
    keras_safe_name,
    layer_names_in,
    node_label,
)
from edgefleet.converter.steps.quantization import QuantizationChoice, choice_in_force
from edgefleet.converter.steps.quantize_onnx import note_rule_floats, rule_float_nodes
from edgefleet.converter.steps.tflite_unfuse import unfuse_inert_activations

# int32 is allowed only where full-INT8 kernels take it: the bias of conv/FC ops, and the shape, axis, index
# and size operands of the layout ops (constants computed at conversion time).
_INT32_OPERANDS = {
    "CONV_2D": {2},
    "DEPTHWISE_CONV_2D": {2},
    "FULLY_CONNECTED": {2},
    "TRANSPOSE_CONV": {0, 3},
    "RESHAPE": {1},
    "PAD": {1},
    "PADV2": {1},
    "MIRROR_PAD": {1},
    "MEAN": {1},
    "SUM": {1},
    "REDUCE_MAX": {1},
    "REDUCE_MIN": {1},
    "SPLIT": {0},
    "SPLIT_V": {1, 2},
    "STRIDED_SLICE": {1, 2, 3},
    "SLICE": {1, 2},
    "GATHER": {1},
    "TRANSPOSE": {1},
    "RESIZE_BILINEAR": {1},
    "RESIZE_NEAREST_NEIGHBOR": {1},
    "BROADCAST_TO": {1},
}


def full_int8_violations(path: Path, float_ops: Iterable[str] = ()) -> list[str]:
    """Everything that keeps a .tflite from being full-INT8 with static shapes (empty list: clean).

    float_ops: output tensor names of ops deliberately kept in float (mixed precision); their tensors, and
    the QUANTIZE/DEQUANTIZE ops around them, may be float."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    problems = []
    if interpreter.num_subgraphs() != 1:
        problems.append(f"{interpreter.num_subgraphs()} subgraphs (want 1)")
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    kept_float = set(float_ops)
    allowed_int32: set[int] = set()
    allowed_float: set[int] = set()
    for op in interpreter._get_ops_details():
        for position in _INT32_OPERANDS.get(op["op_name"], set()):
            if position < len(op["inputs"]):
                allowed_int32.add(int(op["inputs"][position]))
        outputs = [int(i) for i in op["outputs"]]
        if kept_float and (
            op["op_name"] in ("QUANTIZE", "DEQUANTIZE") or any(names[i] in kept_float for i in outputs)
        ):
            allowed_float.update(int(i) for i in [*op["inputs"], *outputs] if int(i) >= 0)
    for tensor in interpreter.get_tensor_details():
        dtype = np.dtype(tensor["dtype"])
        if dtype == np.int32 and tensor["index"] in allowed_int32:
            continue
        if dtype == np.float32 and tensor["index"] in allowed_float:
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
    the artifact, the manifest and a client's request all use one name per tensor. Inputs are matched by
    name (the converter sorts them by name); outputs are named output_0, output_1, ... in the Keras order.
    """
    model = litert_adapter.read_model(flatbuffer)
    subgraph = model.subgraphs[0]
    signature = model.signatureDefs[0] if model.signatureDefs else None
    if signature:
        entries = list(signature.inputs)
        order = keras_input_order([m.name.decode() for m in entries], input_names)
        inputs = [entries[position].tensorIndex for position in order]
    else:
        inputs = list(subgraph.inputs)
    outputs = _ordered_outputs(model)
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
    return litert_adapter.write_model(model)


def _ordered_outputs(model: object) -> list[int]:
    """Output tensor indices in the source model's output order (Keras names them output_0, output_1...)."""
    signature = model.signatureDefs[0] if model.signatureDefs else None  # type: ignore[attr-defined]
    if signature is None:
        return list(model.subgraphs[0].outputs)  # type: ignore[attr-defined]
    return [m.tensorIndex for m in sorted(signature.outputs, key=lambda m: int(m.name.rsplit(b"_", 1)[1]))]


def float_output_tensors(calibrated: bytes, source: object, layers: Iterable[str]) -> dict[str, str]:
    """TFLite output tensor name -> ONNX output name, for the outputs whose ONNX producer is among `layers`:
    the last op writes the graph output under the converter's own name, which carries no layer name."""
    kept = set(layers)
    graph = source.graph  # type: ignore[attr-defined]
    producers = {output: node_label(node) for node in graph.node for output in node.output}
    wanted = [i for i, value in enumerate(graph.output) if producers.get(value.name) in kept]
    if not wanted:
        return {}
    model = litert_adapter.read_model(calibrated)
    tensors, order = model.subgraphs[0].tensors, _ordered_outputs(model)
    return {tensors[order[i]].name.decode(): graph.output[i].name for i in wanted}


def calibrated_model_path(ctx: ConversionContext, method: CalibrationMethod) -> Path:
    """The calibrated float TFLite model (ranges recorded, `method`'s ranges applied): the float reference
    of the per-layer comparison and the input of every re-quantization with that method."""
    return ctx.work_dir / f"calibrated-{method}.tflite"


def _output_tensor_names(model: bytes) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    return [detail["name"] for detail in Interpreter(model_content=model).get_output_details()]


def tflite_op_outputs(model: bytes) -> list[str]:
    """Output tensor names of every op of a TFLite model, in execution order."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    return [names[int(i)] for op in interpreter._get_ops_details() for i in op["outputs"]]


def ops_for_layers(op_outputs: list[str], translation: KerasTranslation, layers: Iterable[str]) -> list[str]:
    """Output tensor names of the TFLite ops that compute any of the ONNX nodes `layers` (the names the
    MLIR quantizer's denylist takes)."""
    wanted = set(layers)
    return [
        name
        for name in op_outputs
        if any(wanted.intersection(translation.layer_nodes.get(k, [])) for k in layer_names_in(name))
    ]


@contextlib.contextmanager
def _native_stderr_discarded() -> Iterator[None]:
    """The TFLite converter and quantizer print from C++ straight to file descriptor 2 ('fully_quantize: 0,
    ...'); Python-level redirection cannot catch that. Errors still arrive as exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quiet() -> contextlib.ExitStack:
    """The converter prints its SavedModel export to stdout and warns freely; keep the CLI output readable."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(_native_stderr_discarded())
    return stack


class QuantizeTflite:
    """Calibrate the Keras twin on NHWC calibration samples (batch 1), then quantize with the MLIR quantizer;
    the choice's float layers (mixed precision) stay float where the profile allows float fallback."""

    name = "quantize tflite (full int8)"

    def __init__(self, io_dtype: Literal["int8", "uint8"]) -> None:
        self.io_dtype = io_dtype

    def _calibrate(self, ctx: ConversionContext, method: CalibrationMethod) -> bytes:
        """The calibrated float model, made once per conversion (re-quantizations reuse it) and once per
        run: profiles quantizing the same Keras translation with the same data share the calibration pass
        (the io dtype and float layers are applied after it)."""
        path = calibrated_model_path(ctx, method)
        if not path.is_file():
            translation: KerasTranslation = ctx.need(ctx.keras_model, "the Keras model")
            # the translation object is shared by the profiles that use it (OnnxToKeras): its id names it
            key = f"tflite-calibrated:{method}:{id(translation)}:{model_key(ctx)}"
            path.write_bytes(ctx.shared.once(key, lambda: self._calibrated(ctx, translation, method)))
        return path.read_bytes()

    def _calibrated(
        self, ctx: ConversionContext, translation: KerasTranslation, method: CalibrationMethod
    ) -> bytes:
        import_keras()  # the Keras twin and TensorFlow must agree on the backend
        calib = ctx.need(ctx.calib, "calibration data")
        names = [t.name for t in ctx.need(ctx.model_info, "model description").inputs]

        def representative() -> Iterator[dict[str, np.ndarray]]:
            # keyed by the serving signature's input names: a list would be fed in the converter's input
            # order, which sorts the inputs by name
            for index in range(calib.samples):
                sample = {}
                for name in names:
                    x = calib.inputs[name][index : index + 1]
                    perm = translation.input_perms[name]
                    x = x if perm is None else np.ascontiguousarray(np.transpose(x, perm))
                    sample[keras_safe_name(name)] = x
                yield sample

        with _quiet():
            try:
                calibrated = litert_adapter.calibrate(translation.model, representative)
            except Exception as exc:
                first = first_line(exc)
                raise ConversionError(
                    f"TFLite conversion failed ({first}); the model may use an op without a TFLite "
                    "kernel - choose an ONNX profile for it"
                ) from exc
            return rewrite_tflite_ranges(calibrated, ctx, translation, method)

    def run(self, ctx: ConversionContext) -> None:
        ctx.artifact_path = self.quantize(ctx, choice_in_force(ctx))

    def quantize(self, ctx: ConversionContext, choice: QuantizationChoice) -> Path:
        calibrated = self._calibrate(ctx, choice.calib_method)
        translation: KerasTranslation = ctx.need(ctx.keras_model, "the Keras model")
        float_ops: list[str] = []
        float_outputs: dict[str, str] = {}
        if choice.float_layers and not ctx.profile.artifact.allow_float_fallback:
            raise ConversionError(
                f"profile '{ctx.profile.name}' does not allow float fallback; layers "
                f"{list(choice.float_layers)} cannot be kept in float"
            )
        by_rule = rule_float_nodes(ctx)  # {} where the target needs every op in int8
        if choice.float_layers or by_rule:
            layers = list(dict.fromkeys([*by_rule, *choice.float_layers]))
            float_ops = ops_for_layers(tflite_op_outputs(calibrated), translation, layers)
            float_outputs = float_output_tensors(calibrated, ctx.need(ctx.model, "the source model"), layers)
            float_ops += list(float_outputs)
            note_rule_floats(ctx, by_rule)
        io_type = self.io_dtype
        # An output computed in float (a YOLO head joining boxes in pixels with scores in [0, 1]) would be
        # re-quantized to one int8 scale at the very end, crushing the scores again: such models keep
        # float32 outputs (only where the profile allows float ops; the artifact's specs say so).
        output_type = "float32" if set(float_ops) & set(_output_tensor_names(calibrated)) else io_type
        with _quiet():
            try:
                flatbuffer = litert_adapter.quantize(calibrated, io_type, output_type, float_ops)
            except Exception as exc:
                first = first_line(exc)
                raise ConversionError(
                    f"TFLite full-INT8 quantization failed ({first}); the model may use an op without an "
                    "INT8 TFLite kernel - choose an ONNX profile for it"
                ) from exc
        flatbuffer, _ = unfuse_inert_activations(flatbuffer)  # TRANSPOSE_CONV v4 -> v3 for the Edge TPU
        info = ctx.need(ctx.model_info, "model description")
        names = [t.name for t in info.inputs]
        out = ctx.work_dir / "model.tflite"
        out.write_bytes(name_io_tensors(flatbuffer, names, [t.name for t in info.outputs]))
        problems = full_int8_violations(out, [*float_ops, *float_outputs.values()])  # outputs renamed
        if ctx.profile.artifact.allow_float_fallback:
            # Where the target runs float ops, what the quantizer could not make int8 (a LayerNorm's
            # statistics) runs in float on the CPU; the summary names it and the budget judges the result.
            left_float = [p for p in problems if p.endswith(" is float32")]
            problems = [p for p in problems if p not in left_float]
            note = (
                f"int8: {len(left_float)} tensor(s) stay float32 (no int8 form in the quantizer), e.g. "
                + "; ".join(left_float[:3])
            )
            if left_float and note not in ctx.notes:
                ctx.notes.append(note)
        if problems:
            raise ConversionError(
                f"the TFLite model is not full-INT8 with static shapes: {'; '.join(problems[:5])}"
            )
        return out
