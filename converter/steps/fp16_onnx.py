"""FP16 ONNX with float32 inputs and outputs, checked to run on onnxruntime's CPUExecutionProvider."""

from __future__ import annotations

import re

from edgefleet.converter.context import ConversionContext
from edgefleet.converter.errors import ConversionError

# "Could not find an implementation for Gemm(13) node with name '...'"
_MISSING_KERNEL = re.compile(r"implementation for (\w+)\(\d+\) node with name '([^']*)'")


def sort_topologically(graph) -> None:  # type: ignore[no-untyped-def]
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


class Fp16Onnx:
    """Convert weights and activations to float16, keeping float32 I/O (Cast at the edges).

    The artifact targets TensorRT/CUDA, but it must also run where only the CPU provider exists (the demo
    host, a device whose GPU provider failed to load). onnxruntime's CPU provider lacks float16 kernels
    for some ops (which ones depends on the onnxruntime version), so the model is loaded on the CPU
    provider and any op type without a float16 CPU kernel is put on the converter's op_block_list and
    kept in float32 (with Casts around it). Those op types are reported in the summary.
    """

    name = "convert onnx to fp16"
    max_attempts = 20

    def run(self, ctx: ConversionContext) -> None:
        import onnx
        import onnxruntime as ort
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        source = ctx.need(ctx.model, "the source model")
        blocked: list[str] = []
        for _ in range(self.max_attempts):
            converted = convert_float_to_float16(
                source, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *blocked]
            )
            sort_topologically(converted.graph)
            onnx.checker.check_model(converted)
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
        out = ctx.work_dir / "model.onnx"
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
