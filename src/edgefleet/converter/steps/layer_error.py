"""Per-layer quantization error: the fp32 and the quantized model run on the same samples, and every layer's
output is compared (SQNR, dB). A layer's `loss_db` is how much SQNR it loses itself (worst input minus
output), which is what points at the layer to keep in float (onnxruntime's qdq_loss_debug, per layer).

ONNX: the QDQ model's tensors keep the fp32 model's names; each compute node's output is read after its
QuantizeLinear/DequantizeLinear pair (what the next layer sees). TFLite: the calibrated float model and the
quantized model share tensor names, and each tensor name carries the Keras layer name, which the ONNX ->
Keras translation maps back to ONNX nodes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgefleet.converter.context import ConversionContext
from edgefleet.converter.steps.calibration import TensorSet
from edgefleet.converter.steps.onnx_to_keras import keras_input_order, layer_names_in
from edgefleet.converter.steps.quantization import QuantizationChoice, choice_in_force

if TYPE_CHECKING:
    from edgefleet.converter.steps.onnx_to_keras import KerasTranslation

LAYER_ERROR_SAMPLES = 32
# Enough input values for stable per-layer SQNRs: large inputs need fewer samples (a 384x384 page: 9), which
# matters because the search measures again after a failed probe and every sample runs two full models.
LAYER_ERROR_INPUT_VALUES = 4_000_000
MIN_LAYER_ERROR_SAMPLES = 8
MAX_SQNR_DB = 100.0  # an exact match (no noise) is reported as this, so the report stays finite JSON
GRAPH_INPUT = "(model input)"
_DQ_SUFFIX = "_DequantizeLinear_Output"
_SKIPPED_ONNX_OPS = {"QuantizeLinear", "DequantizeLinear", "Constant", "Shape"}
_SKIPPED_TFLITE_OPS = {"QUANTIZE", "DEQUANTIZE"}


class LayerError(BaseModel):
    """One layer of the artifact compared with the fp32 model on the same inputs."""

    model_config = ConfigDict(extra="forbid")

    layer: str  # the first ONNX node the layer computes (the name used in reports and ctx.float_layers)
    nodes: list[str]  # every ONNX node it computes (e.g. Conv + the Clip fused into it)
    op: str  # op type in the artifact (ONNX op type or TFLite builtin)
    sqnr_db: float  # fp32 vs artifact at the layer's output, error accumulated from the input on
    loss_db: float  # SQNR lost in this layer: its worst input's SQNR minus its output's
    inputs: list[str]  # layers feeding it (GRAPH_INPUT for the model input)
    kept_float: bool = False


@dataclass
class _Noise:
    """Signal and noise power of one tensor, summed over samples."""

    signal: float = 0.0
    noise: float = 0.0

    def add(self, reference: np.ndarray, observed: np.ndarray) -> None:
        # BLAS dot products in float32 (whole feature maps on every layer, every sample: the float64 sums
        # were most of the per-layer measurement's time); the power sums need no more precision than that
        ref = np.ascontiguousarray(reference, dtype=np.float32).ravel()
        diff = ref - np.ascontiguousarray(observed, dtype=np.float32).ravel()
        self.signal += float(np.dot(ref, ref))
        noise = float(np.dot(diff, diff))
        if not math.isfinite(noise):  # NaN/inf (an fp16 overflow): no signal left at all
            self.noise = math.inf
            return
        self.noise += noise

    @property
    def sqnr_db(self) -> float:
        if not math.isfinite(self.noise):
            return -MAX_SQNR_DB
        if self.noise <= 0:
            return MAX_SQNR_DB
        if self.signal <= 0:
            return 0.0
        return min(MAX_SQNR_DB, 10 * math.log10(self.signal / self.noise))


@dataclass
class _Layer:
    layer: str
    nodes: list[str]
    op: str
    output: str  # tensor compared (a QDQ model's DequantizeLinear output carries the _DQ_SUFFIX)
    input_tensors: list[str]
    noise: _Noise = field(default_factory=_Noise)


def sqnr_db(reference: np.ndarray, observed: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of `observed` against `reference`, dB (capped at MAX_SQNR_DB)."""
    noise = _Noise()
    noise.add(reference, observed)
    return noise.sqnr_db


def _measured_sources(tensor: str, sqnr: dict[str, float], through: dict[str, list[str]]) -> list[str]:
    """The measured tensors `tensor` is computed from: itself, else (through ops that are not measured, a
    Split's outputs, a layout op) the nearest measured tensors upstream."""
    found: list[str] = []
    pending, seen = [tensor], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in sqnr:
            found.append(name)
        else:
            pending.extend(through.get(name, []))
    return found


def _finish(
    layers: list[_Layer],
    producer_of: dict[str, str],
    inputs: dict[str, _Noise],
    through: dict[str, list[str]],
) -> list[LayerError]:
    """LayerErrors from accumulated noise; loss_db = worst input SQNR - output SQNR, the inputs traced
    through unmeasured ops (`through`: tensor -> the inputs of the op writing it) to measured tensors: a
    convolution after a Split is held to the Split's input, not to a perfect one."""
    sqnr = {layer.output.removesuffix(_DQ_SUFFIX): layer.noise.sqnr_db for layer in layers}
    sqnr |= {name: noise.sqnr_db for name, noise in inputs.items()}
    results = []
    for layer in layers:
        feeding = list(
            dict.fromkeys(src for t in layer.input_tensors for src in _measured_sources(t, sqnr, through))
        )
        worst_input = min((sqnr[t] for t in feeding), default=MAX_SQNR_DB)
        results.append(
            LayerError(
                layer=layer.layer,
                nodes=layer.nodes,
                op=layer.op,
                sqnr_db=round(layer.noise.sqnr_db, 2),
                loss_db=round(worst_input - layer.noise.sqnr_db, 2),
                inputs=list(dict.fromkeys(producer_of.get(t, GRAPH_INPUT) for t in feeding)),
            )
        )
    return results


def mark_float(errors: Iterable[LayerError], float_layers: Iterable[str]) -> list[LayerError]:
    kept = set(float_layers)
    return [e.model_copy(update={"kept_float": bool(kept.intersection(e.nodes))}) for e in errors]


def layer_error_samples(data: TensorSet) -> int:
    """How many calibration samples the per-layer comparison runs (see LAYER_ERROR_INPUT_VALUES)."""
    per_sample = sum(int(np.prod(array.shape[1:])) for array in data.inputs.values()) or 1
    wanted = max(MIN_LAYER_ERROR_SAMPLES, LAYER_ERROR_INPUT_VALUES // per_sample)
    return min(LAYER_ERROR_SAMPLES, wanted)


def _samples(data: TensorSet, count: int) -> dict[str, np.ndarray]:
    return {name: array[:count] for name, array in data.inputs.items()}


# --- ONNX QDQ --------------------------------------------------------------------------------------------
def onnx_layer_errors(fp32_model: Any, qdq_path: Path, data: TensorSet, count: int) -> list[LayerError]:
    """Compare every compute node's output of the QDQ model (run with exact int8 semantics) with fp32."""
    import onnx

    from edgefleet.converter.steps.float_rules import Graph

    qdq = onnx.load(str(qdq_path))
    produced = {out for node in qdq.graph.node for out in node.output}
    # Nodes computing only on shapes and constants (a Reshape's target shape, anchor grids) carry no
    # quantization error of their own: ranking them would send mixed precision after them.
    live = Graph(fp32_model).value_dependent()
    fp32_producer = {out: node for node in fp32_model.graph.node for out in node.output}
    graph_inputs = [i.name for i in fp32_model.graph.input if i.name in data.inputs]
    layers: list[_Layer] = []
    producer_of: dict[str, str] = {}
    through: dict[str, list[str]] = {}
    for node in qdq.graph.node:
        # keyed like the layers, by the fp32 tensor name (a DQ output stripped of its suffix); the producer
        # comes before its Q/DQ pair, so it keeps the entry
        sources = [n.removesuffix(_DQ_SUFFIX) for n in node.input if n]
        for extra in node.output[1:]:
            through.setdefault(extra, sources)
        if (
            node.op_type in _SKIPPED_ONNX_OPS
            or not node.output
            or node.output[0] not in fp32_producer
            or node.output[0] not in live
        ):
            if node.output:
                through.setdefault(node.output[0].removesuffix(_DQ_SUFFIX), sources)
            continue
        tensor = node.output[0]
        observed = tensor + _DQ_SUFFIX if tensor + _DQ_SUFFIX in produced else tensor
        absorbed = fp32_producer[tensor]  # e.g. the Clip the quantizer folded into this Conv
        nodes = [node.name] + ([absorbed.name] if absorbed.name and absorbed.name != node.name else [])
        inputs = [n.removesuffix(_DQ_SUFFIX) for n in node.input if n]
        layers.append(_Layer(node.name or tensor, nodes, node.op_type, observed, inputs))
        producer_of[tensor] = node.name or tensor
    input_noise = {name: _Noise() for name in graph_inputs}

    def with_outputs(model: Any, names: list[str]) -> bytes:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        existing = {o.name for o in copy.graph.output}
        copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in existing)
        return copy.SerializeToString()

    reference_names = [layer.output.removesuffix(_DQ_SUFFIX) for layer in layers]
    dq_inputs = [n + _DQ_SUFFIX if n + _DQ_SUFFIX in produced else n for n in graph_inputs]
    observed_names = [layer.output for layer in layers] + dq_inputs
    fp32_session = _session(with_outputs(fp32_model, reference_names), exact_qdq=False)
    qdq_session = _session(with_outputs(qdq, observed_names), exact_qdq=True)
    samples = _samples(data, count)
    for index in range(len(samples[graph_inputs[0]])):
        feeds = {name: samples[name][index : index + 1] for name in graph_inputs}
        reference = dict(zip(reference_names, fp32_session.run(reference_names, feeds), strict=True))
        observed = dict(zip(observed_names, qdq_session.run(observed_names, feeds), strict=True))
        for layer, ref_name in zip(layers, reference_names, strict=True):
            layer.noise.add(reference[ref_name], observed[layer.output])
        for name, dq_name in zip(graph_inputs, dq_inputs, strict=True):
            input_noise[name].add(feeds[name], observed[dq_name])
    return _finish(layers, producer_of, input_noise, through)


def _session(model: bytes, exact_qdq: bool) -> Any:
    """One-thread CPU session; exact_qdq runs Q/DQ pairs as written (see runners.OnnxRunner for why)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # QDQ models leave unused initializers behind; not worth a warning each
    if exact_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


# --- TFLite ----------------------------------------------------------------------------------------------
def _dequantize(detail: dict[str, Any], value: np.ndarray) -> np.ndarray:
    if np.issubdtype(value.dtype, np.floating):
        return value
    scale, zero_point = detail["quantization"]
    return (value.astype(np.float32) - zero_point) * scale


def _quantize_input(detail: dict[str, Any], value: np.ndarray) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.floating):
        return value.astype(dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(value / scale) + zero_point, info.min, info.max).astype(dtype)


def tflite_layer_errors(
    float_model: bytes, quantized: Path, translation: KerasTranslation, data: TensorSet, count: int
) -> list[LayerError]:
    """Compare every op output of the quantized TFLite model with the calibrated float model (same graph,
    same tensor names) and name each op after the ONNX nodes it was translated from."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # The reference kernels, not XNNPACK: a delegate hides the intermediate tensors inside its partition.
    plain = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with warnings.catch_warnings():  # "preserve_all_tensors is intended for debugging": it is what we do
        warnings.simplefilter("ignore")
        reference = Interpreter(
            model_content=float_model,
            experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=plain,
        )
        observed = Interpreter(
            model_path=str(quantized),
            experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=plain,
        )
    reference.allocate_tensors()
    observed.allocate_tensors()
    ref_details = {d["index"]: d for d in reference.get_tensor_details()}
    ref_index = {d["name"]: index for index, d in ref_details.items()}
    name_counts: dict[str, int] = {}
    for detail in observed.get_tensor_details():
        name_counts[detail["name"]] = name_counts.get(detail["name"], 0) + 1
    observed_by_name = {d["name"]: d for d in observed.get_tensor_details() if name_counts[d["name"]] == 1}
    layers: list[_Layer] = []
    producer_of: dict[str, str] = {}
    through: dict[str, list[str]] = {}
    unnamed = 0
    for op in reference._get_ops_details():
        sources = [ref_details[int(i)]["name"] for i in op["inputs"] if int(i) >= 0]
        if op["op_name"] in _SKIPPED_TFLITE_OPS or len(op["outputs"]) != 1:
            through.update({ref_details[int(o)]["name"]: sources for o in op["outputs"]})
            continue
        output = ref_details[int(op["outputs"][0])]["name"]
        if output not in observed_by_name:
            through[output] = sources
            continue
        nodes = [
            n for keras_name in layer_names_in(output) for n in translation.layer_nodes.get(keras_name, [])
        ]
        if not nodes:
            unnamed += 1
            nodes = [f"{op['op_name'].lower()}_{unnamed} ({output.split(';')[0]})"]
        label = nodes[0]
        inputs = [ref_details[int(i)]["name"] for i in op["inputs"] if int(i) >= 0]
        layers.append(_Layer(label, list(dict.fromkeys(nodes)), op["op_name"], output, inputs))
        producer_of[output] = label
    ref_inputs, obs_inputs = reference.get_input_details(), observed.get_input_details()
    input_noise = {d["name"]: _Noise() for d in ref_inputs}
    samples = _samples(data, count)
    order = list(translation.input_perms)
    ref_at = keras_input_order([d["name"] for d in ref_inputs], order)
    obs_at = keras_input_order([d["name"] for d in obs_inputs], order)
    for index in range(len(samples[order[0]])):
        for ref_position, obs_position, name in zip(ref_at, obs_at, order, strict=True):
            x = samples[name][index : index + 1]
            perm = translation.input_perms[name]
            x = x if perm is None else np.ascontiguousarray(np.transpose(x, perm))
            reference.set_tensor(ref_inputs[ref_position]["index"], x.astype(np.float32))
            obs_detail = obs_inputs[obs_position]
            observed.set_tensor(obs_detail["index"], _quantize_input(obs_detail, x))
        reference.invoke()
        observed.invoke()
        for ref_position, obs_position in zip(ref_at, obs_at, strict=True):
            ref_in, obs_in = ref_inputs[ref_position], obs_inputs[obs_position]
            input_noise[ref_in["name"]].add(
                reference.get_tensor(ref_in["index"]),
                _dequantize(obs_in, observed.get_tensor(obs_in["index"])),
            )
        for layer in layers:
            obs_detail = observed_by_name[layer.output]
            layer.noise.add(
                reference.get_tensor(ref_index[layer.output]),
                _dequantize(obs_detail, observed.get_tensor(obs_detail["index"])),
            )
    return _finish(layers, producer_of, input_noise, through)


# --- step ------------------------------------------------------------------------------------------------
def measure_layer_errors(ctx: ConversionContext, choice: QuantizationChoice) -> list[LayerError]:
    """Per-layer errors of the current INT8 artifact, built with `choice` (empty for fp16/fp32 artifacts)."""
    from edgefleet.contract.profiles import Precision
    from edgefleet.converter.steps.quantize_tflite import calibrated_model_path

    if ctx.profile.artifact.precision is not Precision.INT8:
        return []
    path = ctx.need(ctx.artifact_path, "the artifact")
    data = ctx.need(ctx.calib, "calibration data")
    if path.suffix == ".tflite":
        translation = ctx.need(ctx.keras_model, "the Keras translation")
        errors = tflite_layer_errors(
            calibrated_model_path(ctx, choice.calib_method).read_bytes(),
            path,
            translation,
            data,
            layer_error_samples(data),
        )
    else:
        errors = onnx_layer_errors(
            ctx.need(ctx.model, "the source model"), path, data, layer_error_samples(data)
        )
    from edgefleet.converter.steps.quantize_onnx import rule_float_nodes

    return mark_float(errors, [*choice.float_layers, *rule_float_nodes(ctx)])  # both paths keep the rules


class MeasureLayerErrors:
    """Fill ctx.layer_errors for the final artifact (the report's per-layer plot)."""

    name = "measure per-layer error"

    def run(self, ctx: ConversionContext) -> None:
        ctx.layer_errors = measure_layer_errors(ctx, choice_in_force(ctx))
