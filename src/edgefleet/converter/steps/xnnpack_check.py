"""Which ops of a TFLite artifact XNNPACK takes, measured by letting this host's LiteRT apply its XNNPACK
delegate and reading the partition it made; the others run on LiteRT's built-in CPU kernels (slower, and
each one splits the XNNPACK graph). The Pi runs the same delegate code; its LiteRT version may differ.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from edgefleet.contract.target_checks import TargetChecks, UnsupportedOp, XnnpackReport
from edgefleet.converter.context import ConversionContext
from edgefleet.converter.steps.edgetpu_check import short_name

DELEGATE_NODE = "DELEGATE"


def xnnpack_delegated(path: Path) -> tuple[list[dict], set[int], dict[int, str]]:
    """(the model's ops, indices of the ops XNNPACK took, tensor names by index). After allocate_tensors the
    interpreter lists one
    DELEGATE node per partition after the original ops; an op belongs to a partition when it lies between
    the partition's inputs and its outputs."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    ops = list(interpreter._get_ops_details())
    interpreter.allocate_tensors()  # applies the default XNNPACK delegate
    producers = {int(t): op["index"] for op in ops for t in op["outputs"]}
    delegated: set[int] = set()
    for node in interpreter._get_ops_details()[len(ops) :]:
        if node["op_name"] != DELEGATE_NODE:
            continue
        boundary = {int(t) for t in node["inputs"]}
        pending = [int(t) for t in node["outputs"]]
        while pending:
            tensor = pending.pop()
            op_index = producers.get(tensor)
            if tensor in boundary or op_index is None or op_index in delegated:
                continue
            delegated.add(op_index)
            pending.extend(int(t) for t in ops[op_index]["inputs"] if int(t) >= 0)
    names = {int(d["index"]): str(d["name"]) for d in interpreter.get_tensor_details()}
    return ops, delegated, names


def xnnpack_checks(path: Path) -> TargetChecks:
    ops, delegated, tensor_names = xnnpack_delegated(path)
    runtime = f"ai-edge-litert {version('ai-edge-litert')}"
    unsupported = [
        UnsupportedOp(
            op=op["op_name"],
            layer=short_name(tensor_names.get(int(op["outputs"][0]), "")) or f"op {op['index']}",
            reason=f"XNNPACK ({runtime}) does not take this op with these tensor types",
            consequence="runs on the CPU",
        )
        for op in ops
        if op["index"] not in delegated
    ]
    passed = not unsupported
    if passed:
        summary = f"XNNPACK takes all {len(ops)} ops (partitioned by {runtime})"
    else:
        names = ", ".join(f"{u.op} ('{u.layer}')" for u in unsupported[:5])
        summary = (
            f"{len(unsupported)} of {len(ops)} ops run on LiteRT's built-in CPU kernels instead of "
            f"XNNPACK: {names}"
        )
    return TargetChecks(
        target="xnnpack",
        passed=passed,
        summary=summary,
        unsupported_ops=unsupported,
        xnnpack=XnnpackReport(measured_with=runtime, ops=len(ops), delegated_ops=len(delegated)),
    )


class XnnpackCheck:
    name = "check xnnpack coverage"

    def run(self, ctx: ConversionContext) -> None:
        checks = xnnpack_checks(ctx.need(ctx.artifact_path, "the artifact"))
        ctx.target_checks = checks
        if not checks.passed:
            ctx.notes.append(f"xnnpack: {checks.summary}")
