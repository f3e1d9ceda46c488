"""Calibration methods (how activation ranges are chosen from the calibration data) for both quantizers.

minmax: the observed range. entropy: the range minimising the KL divergence between the float and the
8-bit histogram (TensorRT's method). percentile: the range holding 99.999% of the values.

The histogram methods run the fp32 ONNX model once (onnxruntime, batched, every activation as an output)
and feed onnxruntime's HistogramCollector a batch at a time (its own calibrators keep every activation of
every sample in memory: GBs for a 224x224 CNN). The ranges, per ONNX tensor, are computed once per
conversion and used by both quantizers: as quantize_static TensorQuantOverrides for ONNX, and for TFLite
written into the calibrated model (each TFLite tensor traced to its ONNX node by the Keras layer names)
before the MLIR quantizer turns them into scales.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from edgefleet.converter import litert_adapter
from edgefleet.converter.context import CalibrationMethod, ConversionContext
from edgefleet.converter.shared_work import model_key
from edgefleet.converter.steps.calibration import TensorSet
from edgefleet.converter.steps.onnx_to_keras import (
    KerasTranslation,
    keras_input_order,
    layer_names_in,
    node_label,
)

# Measured by bench/bench_quantization.py on the reference models (digits CNN v1/v2, MobileNetV2-style 96x96;
# 12 INT8 artifacts, pure int8, 360 held-out samples: one sample is 0.28 points): summed accuracy drop
# minmax 2.51, percentile 2.79, entropy 3.05 points; summed output SQNR 315.6 / 316.5 / 227.6 dB. Minmax
# lost least. (An earlier percentile computed from onnxruntime's 2048-bin histogram, whose bin edges widen
# the range a little, summed 1.96 points: the methods differ by single samples on these models.)
DEFAULT_CALIBRATION_METHOD: CalibrationMethod = "minmax"
CALIBRATION_METHODS: tuple[CalibrationMethod, ...] = ("minmax", "entropy", "percentile")
PERCENTILE = 99.999  # onnxruntime's default: 0.0005% of the values are cut off at each end
# onnxruntime's Entropy calibrator defaults.
_ENTROPY_SETTINGS = {"num_bins": 128, "num_quantized_bins": 128, "percentile": PERCENTILE}
RANGE_BATCH = 8  # samples per fp32 run and range update: bounds memory on large feature maps
# Entropy histograms are built from at most this many values per tensor and update (an even stride through
# the batch); min/max always see every value. A 224x224 MobileNet's largest maps would otherwise dominate
# the conversion time.
MAX_HISTOGRAM_VALUES = 1_000_000


def calibration_method(ctx: ConversionContext) -> CalibrationMethod:
    """The user's method, else the one the accuracy budget chose by measured loss, else the default."""
    return ctx.request.calib_method or ctx.calib_method or DEFAULT_CALIBRATION_METHOD


Range = tuple[float, float]


class _Tails:
    """The k smallest and k largest values seen so far: the exact percentile range of a stream, in memory
    O(k). Values inside the current tails are dropped with one comparison, so most batches cost a scan."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.low = np.empty(0, np.float32)
        self.high = np.empty(0, np.float32)

    @staticmethod
    def _largest(values: np.ndarray, k: int) -> np.ndarray:
        return values if values.size <= k else np.partition(values, values.size - k)[values.size - k :]

    def add(self, values: np.ndarray) -> None:
        k = self.keep
        above = values[values > self.high.min()] if self.high.size >= k else values
        below = values[values < self.low.max()] if self.low.size >= k else values
        self.high = self._largest(np.concatenate([self.high, above]), k)
        self.low = -self._largest(-np.concatenate([self.low, below]), k)

    @property
    def range(self) -> Range:
        return float(self.low.max()), float(self.high.min())


def method_ranges(
    method: CalibrationMethod, batches: Iterable[dict[str, np.ndarray]], total_samples: int
) -> dict[str, Range]:
    """`method`'s range for every tensor in `batches` (tensor name -> values, first axis = samples), inside
    the observed range. percentile: exact, from the tails of the value stream (`total_samples` sizes them);
    entropy: onnxruntime's HistogramCollector (its thresholds are symmetric around 0, so a ReLU output is
    clipped back to its observed minimum of 0)."""
    cut = (100.0 - PERCENTILE) / 200.0
    tails: dict[str, _Tails] = {}
    observed: dict[str, Range] = {}
    collector = None
    if method == "entropy":
        from onnxruntime.quantization.calibrate import HistogramCollector

        collector = HistogramCollector(method=method, symmetric=False, scenario="same", **_ENTROPY_SETTINGS)
    for batch in batches:
        flat = {}
        for name, values in batch.items():
            array = np.asarray(values, dtype=np.float32)
            flat[name] = array.ravel()
            if method == "percentile":
                if name not in tails:
                    per_sample = array.size // max(len(array), 1)
                    tails[name] = _Tails(int(per_sample * total_samples * cut) + 1)
                tails[name].add(flat[name])
            low, high = float(flat[name].min()), float(flat[name].max())
            seen = observed.get(name, (low, high))
            observed[name] = (min(seen[0], low), max(seen[1], high))
        if collector is not None:
            sampled = {n: v[:: -(-v.size // MAX_HISTOGRAM_VALUES)] for n, v in flat.items()}
            with contextlib.redirect_stdout(io.StringIO()):  # the collector prints progress lines
                collector.collect(sampled)
    if method == "minmax":
        return observed
    if collector is None:
        return {name: tail.range for name, tail in tails.items()}
    with contextlib.redirect_stdout(io.StringIO()):
        thresholds = collector.compute_collection_result()
    ranges = {}
    for name, (seen_low, seen_high) in observed.items():
        low, high = max(float(thresholds[name][0]), seen_low), min(float(thresholds[name][1]), seen_high)
        ranges[name] = (low, high) if high > low else (seen_low, seen_high)
    return ranges


def onnxruntime_calibration(method: CalibrationMethod) -> object:
    """onnxruntime's CalibrationMethod for quantize_static: MinMax always; other methods' ranges come in as
    TensorQuantOverrides (onnx_range_overrides)."""
    from onnxruntime.quantization import CalibrationMethod as OrtMethod

    return OrtMethod.MinMax


def session_with_outputs(model: Any, names: list[str]) -> Any:
    """An onnxruntime session of `model` that also outputs the tensors `names` (intermediates)."""
    import onnx
    import onnxruntime as ort

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    augmented.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in existing)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _fixed_batch(model: Any) -> bool:
    first = model.graph.input[0].type.tensor_type.shape.dim
    return bool(first) and first[0].HasField("dim_value") and first[0].dim_value > 0


def onnx_activation_ranges(ctx: ConversionContext, method: CalibrationMethod) -> dict[str, Range]:
    """`method`'s range of every float activation (and graph input) of the fp32 ONNX model, by tensor name;
    {} for minmax (each quantizer's own calibration observes those ranges). Computed once per run: shared
    with the alternatives' contexts and the other profiles of `convert --profile a,b,c`. The ranges that
    quantization-aware training learned (ctx.learned_ranges) replace the calibrated ones of their tensors."""
    if method == "minmax":
        return dict(ctx.learned_ranges)  # quantization-aware training's, else none
    model = ctx.need(ctx.model, "the source model")

    def collect() -> dict[str, Range]:
        calib = ctx.need(ctx.calib, "calibration data")
        batches = calib.sample_batches(1 if _fixed_batch(model) else RANGE_BATCH)
        if callable(ctx.detail):
            ctx.detail(f"{method} ranges from {calib.samples} samples")
        return _run_and_collect(model, method, batches, calib.samples)

    return {**ctx.shared.once(f"ranges:{method}:{model_key(ctx)}", collect), **ctx.learned_ranges}


def observed_ranges(model: Any, data: TensorSet) -> dict[str, Range]:
    """The observed (min, max) of every float tensor of `model` (graph inputs and every node output) over
    `data`: one batched fp32 run. FP16 conversion reads it to find values beyond float16's range."""
    batches = data.sample_batches(1 if _fixed_batch(model) else RANGE_BATCH)
    return _run_and_collect(model, "minmax", batches, data.samples)


def tensor_peaks(model: Any, data: TensorSet, names: list[str]) -> dict[str, float]:
    """max |x| of each named tensor of `model` over `data` (one batched fp32 run with just those outputs)."""

    session = session_with_outputs(model, names)
    peaks = dict.fromkeys(names, 0.0)
    for feeds in data.sample_batches(1 if _fixed_batch(model) else RANGE_BATCH):
        for name, value in zip(names, session.run(names, feeds), strict=True):
            peaks[name] = max(peaks[name], float(np.abs(value).max(initial=0.0)))
    return peaks


def _run_and_collect(
    model: Any, method: CalibrationMethod, batches: Iterable[dict[str, np.ndarray]], samples: int
) -> dict[str, Range]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    float_type = onnx.TensorProto.FLOAT
    known = {
        v.name
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
        if v.type.tensor_type.elem_type == float_type
    }
    initializers = {i.name for i in model.graph.initializer}
    activations = [
        out
        for node in model.graph.node
        if node.op_type != "Constant"
        for out in node.output
        if out in known and out not in initializers
    ]
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    session = session_with_outputs(model, activations)
    names = [o.name for o in session.get_outputs()]
    wanted = set(activations) | set(inputs)

    def values() -> Iterator[dict[str, np.ndarray]]:
        for feeds in batches:
            outputs = dict(zip(names, session.run(None, feeds), strict=True))
            yield {n: v for n, v in {**feeds, **outputs}.items() if n in wanted}

    return method_ranges(method, values(), samples)


def onnx_range_overrides(
    ctx: ConversionContext, method: CalibrationMethod
) -> dict[str, list[dict[str, Any]]]:
    """quantize_static TensorQuantOverrides giving every activation the method's range ({} for minmax)."""
    ranges = dict(onnx_activation_ranges(ctx, method))
    if not ranges:
        return {}
    model = ctx.need(ctx.model, "the source model")
    # What quantize_static does to calibrated ranges (BaseQuantizer.adjust_tensor_ranges), which overrides
    # would otherwise bypass: a Relu/Clip's sole input shares its output's range (the negative side is
    # clipped anyway), and a Softmax output spans [0, 1].
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for node in model.graph.node:
        if (
            node.op_type in ("Relu", "Clip")
            and consumers.get(node.input[0]) == 1
            and node.output[0] in ranges
        ):
            ranges[node.input[0]] = ranges[node.output[0]]
        elif node.op_type == "Softmax" and node.output[0] in ranges:
            ranges[node.output[0]] = (0.0, 1.0)
    return {
        name: [{"rmin": np.float32(low), "rmax": np.float32(high)}] for name, (low, high) in ranges.items()
    }


def rewrite_tflite_ranges(
    calibrated: bytes, ctx: ConversionContext, translation: KerasTranslation, method: CalibrationMethod
) -> bytes:
    """The calibrated TFLite model with each recorded activation range replaced by the method's range of the
    ONNX tensor it computes. Tensors the translation made up (explicit padding, layout reshapes) keep the
    observed range; so does everything under minmax."""
    ranges = onnx_activation_ranges(ctx, method)
    if not ranges:
        return calibrated
    model = ctx.need(ctx.model, "the source model")
    output_of = {node_label(node): node.output[0] for node in model.graph.node}
    flat = litert_adapter.read_model(calibrated)
    subgraph = flat.subgraphs[0]
    onnx_inputs = list(translation.input_perms)
    order = keras_input_order([subgraph.tensors[i].name.decode() for i in subgraph.inputs], onnx_inputs)
    source: dict[int, str] = {
        int(subgraph.inputs[position]): name for position, name in zip(order, onnx_inputs, strict=True)
    }
    for index, tensor in enumerate(subgraph.tensors):
        layers = layer_names_in(tensor.name.decode())
        nodes = translation.layer_nodes.get(layers[-1], []) if layers else []
        if nodes and nodes[-1] in output_of:
            source[index] = output_of[nodes[-1]]  # the last node of the layer: what the tensor holds
    for index, name in source.items():
        quant = subgraph.tensors[index].quantization
        if quant is None or quant.min is None or name not in ranges:
            continue
        low, high = ranges[name]
        quant.min, quant.max = [low], [high]
    return litert_adapter.write_model(flat)
