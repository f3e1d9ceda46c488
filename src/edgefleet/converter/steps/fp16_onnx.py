"""FP16 ONNX with float32 inputs and outputs, checked to run on onnxruntime's CPUExecutionProvider; what
float16 cannot hold (weights, calibrated activations beyond its range) stays float32 by node."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.converter.context import ConversionContext
from edgefleet.converter.errors import ConversionError

FP16_MAX = 65504.0
# Activations are judged on the calibration data; evaluation and field data reach further, so a tensor
# already past half of float16's range on calibration data stays float32.
FP16_SAFE = FP16_MAX / 2

# "Could not find an implementation for Gemm(13) node with name '...'"
_MISSING_KERNEL = re.compile(r"implementation for (\w+)\(\d+\) node with name '([^']*)'")


def sort_topologically(graph) -> None:
    """Reorder graph.node in place so every node comes after its producers.

    convert_float_to_float16 appends the Casts it inserts for keep_io_types at the end of the node list;
    onnxruntime copes, but the ONNX spec (and onnx.checker) require topological order.
    """
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ConversionError(
                f"fp16: the converted graph has a cycle or a missing input near '{pending[0].name}'"
            )
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def fold_batchnorm(model: Any) -> tuple[Any, list[str]]:
    """`model` (a copy) with each BatchNormalization that follows a Conv (the Conv's only reader, constant
    weights and statistics) folded into the Conv's weights and bias; the names of the folded BatchNorms.
    A running variance of 1e8 cannot be stored in float16; folded, it becomes an ordinary weight scale."""
    import onnx
    from onnx import numpy_helper

    folded_model = onnx.ModelProto()
    folded_model.CopyFrom(model)
    graph = folded_model.graph
    inputs = {i.name for i in graph.input}
    inits = {i.name: i for i in graph.initializer if i.name not in inputs}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    folded: list[str] = []
    drop: set[int] = set()
    for norm in graph.node:
        conv = producer.get(norm.input[0])
        if (
            norm.op_type != "BatchNormalization"
            or len(norm.output) != 1
            or conv is None
            or conv.op_type != "Conv"
            or readers.get(conv.output[0]) != 1
            or conv.output[0] in outputs
            or not all(name in inits for name in [*norm.input[1:5], *conv.input[1:]])
        ):
            continue
        scale, bias, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in norm.input[1:5])
        eps = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        conv_bias = (
            numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(weight.shape[0])
        )
        factor = scale / np.sqrt(var + eps)
        new_weight = (weight * factor.reshape(-1, *[1] * (weight.ndim - 1))).astype(np.float32)
        new_bias = ((conv_bias - mean) * factor + bias).astype(np.float32)
        name = conv.name or conv.output[0]
        weight_name, bias_name = f"{name}.bn_folded.weight", f"{name}.bn_folded.bias"
        graph.initializer.extend(
            [numpy_helper.from_array(new_weight, weight_name), numpy_helper.from_array(new_bias, bias_name)]
        )
        del conv.input[1:]
        conv.input.extend([weight_name, bias_name])
        conv.output[0] = norm.output[0]  # the Conv now computes what the BatchNorm did
        drop.add(id(norm))
        folded.append(norm.name or norm.output[0])
    if drop:
        kept = [node for node in graph.node if id(node) not in drop]
        copies = [onnx.NodeProto() for _ in kept]
        for copy, node in zip(copies, kept, strict=True):
            copy.CopyFrom(node)
        del graph.node[:]
        graph.node.extend(copies)
        read = {n for node in graph.node for n in node.input}
        for init in [i for i in graph.initializer if i.name not in read and i.name not in inputs]:
            graph.initializer.remove(init)
    return folded_model, folded


def out_of_range_nodes(model: Any, ranges: dict[str, tuple[float, float]]) -> dict[str, str]:
    """Node name -> why it must stay float32: a float weight float16 cannot hold, or an input or output
    whose calibrated values pass FP16_SAFE (a float32 producer still feeds a consumer through a Cast)."""
    from onnx import numpy_helper

    inputs = {i.name for i in model.graph.input}
    big_weights = {
        i.name: float(np.abs(array).max())
        for i in model.graph.initializer
        if i.name not in inputs
        and (array := numpy_helper.to_array(i)).dtype == np.float32
        and array.size
        and float(np.abs(array).max()) > FP16_MAX
    }
    peak = {name: max(abs(low), abs(high)) for name, (low, high) in ranges.items()}
    blocked: dict[str, str] = {}
    for node in model.graph.node:
        name = node.name
        weights = [n for n in node.input if n in big_weights]
        if weights:
            blocked[name] = f"weight '{weights[0]}' reaches {big_weights[weights[0]]:.3g}"
            continue
        for tensor in [*node.output, *node.input]:
            if peak.get(tensor, 0.0) > FP16_SAFE or not np.isfinite(peak.get(tensor, 0.0)):
                blocked[name] = f"'{tensor}' reaches {peak[tensor]:.3g} on the calibration data"
                break
    return blocked


def _name_nodes(model: Any) -> None:
    """Give unnamed nodes a name: float16 conversion keeps nodes in float32 by name."""
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{index}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)


RECURRENT_OPS = {"GRU", "LSTM", "RNN"}
LOAD_PROBE_TIMEOUT_S = 300
# Loads the model in a child process: "ok" on stdout, or the child dies (a crash inside onnxruntime).
_LOAD_PROBE = (
    "import sys, onnxruntime as ort; "
    "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']); print('ok')"
)


def loads_without_crashing(path: Path) -> bool:
    """Whether onnxruntime can open `path` without dying. onnxruntime 1.31's full graph optimisation
    segfaults on some float16 graphs around recurrent ops (a GRU with float16 neighbours); a crash must
    not take the converter down, and such an artifact would take the device's agent down."""
    import subprocess
    import sys

    try:
        probe = subprocess.run(
            [sys.executable, "-c", _LOAD_PROBE, str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=LOAD_PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:  # a hang is as fatal on the device as a crash
        return False
    return probe.returncode >= 0


def drop_duplicate_casts(graph: Any) -> None:
    """convert_float_to_float16 inserts one Cast per blocked consumer of a float16 tensor, all with the same
    output name when several consumers are blocked; they compute the same value, so one stays."""
    seen: set[tuple[str, str]] = set()
    keep = []
    for node in graph.node:
        key = (node.input[0], node.output[0]) if node.op_type == "Cast" else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        keep.append(node)
    if len(keep) != len(graph.node):
        copies = [type(n)() for n in keep]
        for copy, node in zip(copies, keep, strict=True):
            copy.CopyFrom(node)
        del graph.node[:]
        graph.node.extend(copies)


def drop_round_trips(model: Any) -> None:
    """convert_float_to_float16 passes a tensor between two nodes kept in float32 through float16 anyway
    (Cast to fp16, Cast back): a value past 65504 becomes inf there. Such pairs (from a float32 tensor)
    are removed, so the float32 nodes read each other's float32 values."""
    import onnx

    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    elem_types = {
        value.name: value.type.tensor_type.elem_type
        for value in [*inferred.value_info, *inferred.input, *inferred.output]
    } | {init.name: init.data_type for init in graph.initializer}

    def cast_to(node: Any) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((int(a.i) for a in node.attribute if a.name == "to"), None)

    producer = {out: node for node in graph.node for out in node.output}
    rename: dict[str, str] = {}
    dropped: set[int] = set()
    for node in graph.node:
        source = producer.get(node.input[0]) if node.input else None
        if (
            cast_to(node) == fp32
            and source is not None
            and cast_to(source) == fp16
            and elem_types.get(source.input[0]) == fp32  # not an integer or double tensor cast twice
        ):
            rename[node.output[0]] = source.input[0]
            dropped.add(id(node))
    if not rename:
        return
    outputs = {v.name for v in graph.output}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for value in graph.output:  # a graph output keeps its name: its Cast stays
        if value.name in rename:
            dropped.discard(next(id(n) for n in graph.node if value.name in n.output))
    used = {name for node in graph.node if id(node) not in dropped for name in node.input} | outputs
    for node in graph.node:  # a Cast to fp16 nobody reads any more
        if cast_to(node) == fp16 and not used.intersection(node.output):
            dropped.add(id(node))
    keep = [n for n in graph.node if id(n) not in dropped]
    copies = [type(n)() for n in keep]
    for copy, node in zip(copies, keep, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def recurrent_neighbourhood(model: Any, hops: int) -> list[str]:
    """Names of the recurrent nodes and of the nodes up to `hops` edges away from them."""
    chosen = {id(n): n for n in model.graph.node if n.op_type in RECURRENT_OPS}
    for _ in range(hops):
        touching = {name for n in chosen.values() for name in [*n.input, *n.output] if name}
        for node in model.graph.node:
            if touching.intersection([*node.input, *node.output]):
                chosen[id(node)] = node
    return [n.name for n in model.graph.node if id(n) in chosen]


class Fp16Onnx:
    """Convert weights and activations to float16, keeping float32 I/O (Cast at the edges).

    The artifact targets TensorRT/CUDA, but it must also run where only the CPU provider exists (the demo
    host, a device whose GPU provider failed to load). onnxruntime's CPU provider lacks float16 kernels
    for some ops (which ones depends on the onnxruntime version), so the model is loaded on the CPU
    provider and any op type without a float16 CPU kernel is put on the converter's op_block_list and
    kept in float32 (with Casts around it). Those op types are reported in the summary.

    Before casting, BatchNorms are folded into their Convs, the fp32 model is run on the calibration data
    and every node whose weights or calibrated values exceed float16's range stays float32 by name (the
    summary names them): float16 would clip them to 65504 and the output would be noise.
    """

    name = "convert onnx to fp16"
    max_attempts = 20
    max_recurrent_hops = 3

    def run(self, ctx: ConversionContext) -> None:
        import onnx
        import onnxruntime as ort
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        from edgefleet.converter.steps.calibration_ranges import observed_ranges

        source, folded = fold_batchnorm(ctx.need(ctx.model, "the source model"))
        _name_nodes(source)
        if callable(ctx.detail):
            ctx.detail("fp16: value ranges of every tensor on the calibration data")
        out_of_range = out_of_range_nodes(source, observed_ranges(source, ctx.need(ctx.calib, "calibration")))
        blocked: list[str] = []
        kept_recurrent: list[str] = []
        hops = 0
        out = ctx.work_dir / "model.onnx"
        for _ in range(self.max_attempts):
            converted = convert_float_to_float16(
                source,
                keep_io_types=True,
                op_block_list=[*DEFAULT_OP_BLOCK_LIST, *blocked],
                node_block_list=[*out_of_range, *kept_recurrent],
            )
            drop_duplicate_casts(converted.graph)
            drop_round_trips(converted)
            sort_topologically(converted.graph)
            onnx.checker.check_model(converted)
            if any(n.op_type in RECURRENT_OPS for n in converted.graph.node):
                onnx.save(converted, str(out))
                if not loads_without_crashing(out):
                    hops += 1
                    if hops > self.max_recurrent_hops:
                        raise ConversionError(
                            "onnxruntime crashes loading the fp16 model even with its recurrent layers and "
                            "their neighbours in float32; convert with --precision fp32 for this model"
                        )
                    kept_recurrent = recurrent_neighbourhood(source, hops)
                    continue
            try:
                ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
            except Exception as exc:
                match = _MISSING_KERNEL.search(str(exc))
                if match is None or match.group(1) in blocked:
                    raise ConversionError(
                        "the fp16 model does not load on onnxruntime's CPU provider "
                        f"({str(exc).strip()[:300]})"
                    ) from exc
                blocked.append(match.group(1))
                continue
            break
        else:
            raise ConversionError(f"fp16: too many ops without a CPU float16 kernel ({blocked})")
        if blocked:
            ctx.notes.append(
                f"fp16: kept {', '.join(blocked)} in float32 (no float16 CPU kernel in onnxruntime)"
            )
        if kept_recurrent:
            ctx.notes.append(
                f"fp16: kept {len(kept_recurrent)} node(s) around the recurrent layers in float32 "
                "(onnxruntime crashes loading them in float16): " + ", ".join(kept_recurrent[:8])
            )
        if folded:
            ctx.notes.append(f"fp16: folded {len(folded)} BatchNormalization node(s) into their Conv")
        if out_of_range:
            shown = "; ".join(f"{name} ({why})" for name, why in list(out_of_range.items())[:8])
            more = f" and {len(out_of_range) - 8} more" if len(out_of_range) > 8 else ""
            ctx.notes.append(
                f"fp16: kept {len(out_of_range)} node(s) in float32, their values exceed float16's range "
                f"(max {FP16_MAX:g}): {shown}{more}"
            )
        onnx.save(converted, str(out))
        ctx.artifact_path = out


class CopyOnnx:
    """fp32 ONNX profiles: the artifact is the checked source model itself."""

    name = "copy fp32 onnx"

    def run(self, ctx: ConversionContext) -> None:
        import onnx

        out = ctx.work_dir / "model.onnx"
        onnx.save(ctx.need(ctx.model, "the source model"), str(out))
        ctx.artifact_path = out
