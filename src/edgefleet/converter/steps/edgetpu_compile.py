"""Compile the checked TFLite with `edgetpu_compiler` when it is on PATH, fold its summary (ops mapped / not
mapped, subgraphs) into the Edge TPU report and ship the compiled `*_edgetpu.tflite` in the bundle; without
the compiler the manifest says "not compiled for Edge TPU".

Only the invocation and the parsing of the compiler's output are tested here (with a stand-in script that
writes a log in the compiler's format): the real compiler does not run on this machine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.contract.manifest import ArtifactAlternative
from edgefleet.contract.profiles import ArtifactFormat, Precision
from edgefleet.contract.target_checks import CompilerOpLine, EdgeTpuCompilation, UnsupportedOp
from edgefleet.converter.context import ConversionContext
from edgefleet.converter.steps.edgetpu_check import refuse

COMPILER = "edgetpu_compiler"
COMPILE_TIMEOUT_SECONDS = 600
COMPILED_MEMBER = "model_edgetpu.tflite"
MAPPED = "Mapped to Edge TPU"
NOT_ON_PATH = (
    f"not compiled for Edge TPU: {COMPILER} is not on PATH (Coral's compiler runs on x86-64 Linux: "
    "`apt-get install edgetpu-compiler` from Coral's package repository, then convert again, or run it on "
    "model.tflite yourself); until then the Edge TPU delegate runs this model on the CPU"
)

_VERSION = re.compile(r"Edge TPU Compiler version (\S+)")
_INT_FIELDS = {
    "edgetpu_subgraphs": re.compile(r"Number of Edge TPU subgraphs:\s*(\d+)"),
    "total_ops": re.compile(r"Total number of operations:\s*(\d+)"),
    "ops_on_edgetpu": re.compile(r"Number of operations that will run on Edge TPU:\s*(\d+)"),
    "ops_on_cpu": re.compile(r"Number of operations that will run on CPU:\s*(\d+)"),
}
_OUTPUT_MODEL = re.compile(r"Output model:\s*(\S.*)")
_TABLE_ROW = re.compile(r"^([A-Z][A-Z0-9_]*|[a-z][a-z0-9-]*-op)\s+(\d+)\s+(\S.*?)\s*$")


@dataclass
class CompilerSummary:
    version: str | None = None
    edgetpu_subgraphs: int | None = None
    total_ops: int | None = None
    ops_on_edgetpu: int | None = None
    ops_on_cpu: int | None = None
    output_model: str | None = None
    operations: list[CompilerOpLine] = field(default_factory=list)


def parse_compiler_output(text: str) -> CompilerSummary:
    """Read the compiler's stdout and operation log (`Operator  Count  Status` table)."""
    summary = CompilerSummary()
    if match := _VERSION.search(text):
        summary.version = match.group(1)
    for name, pattern in _INT_FIELDS.items():
        if match := pattern.search(text):
            setattr(summary, name, int(match.group(1)))
    if match := _OUTPUT_MODEL.search(text):
        summary.output_model = match.group(1).strip()
    tables: list[list[CompilerOpLine]] = []  # stdout (--show_operations) and the .log repeat one table
    for line in text.splitlines():
        if re.match(r"^\s*Operator\s+Count\s+Status\s*$", line):
            tables.append([])
            continue
        row = _TABLE_ROW.match(line.strip()) if tables else None
        if row:
            tables[-1].append(CompilerOpLine(op=row.group(1), count=int(row.group(2)), status=row.group(3)))
        elif tables and tables[-1] and line.strip():
            tables.append([])  # the table ended: later rows are not part of it
    summary.operations = next((table for table in tables if table), [])
    mapped = sum(line.count for line in summary.operations if line.status == MAPPED)
    not_mapped = sum(line.count for line in summary.operations if line.status != MAPPED)
    if summary.ops_on_edgetpu is None and summary.operations:
        summary.ops_on_edgetpu = mapped
    if summary.ops_on_cpu is None and summary.operations:
        summary.ops_on_cpu = not_mapped
    return summary


def run_compiler(compiler: str, model: Path, out_dir: Path) -> tuple[int, str]:
    """(exit code, stdout + stderr + the operation log) of one compiler run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        process = subprocess.run(
            [compiler, "--out_dir", str(out_dir), "--show_operations", str(model)],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return -1, f"{compiler} did not finish within {COMPILE_TIMEOUT_SECONDS} s"
    except OSError as exc:  # not executable, wrong architecture, ...
        return -1, f"{compiler} could not be started: {exc}"
    logs = [p.read_text(errors="replace") for p in sorted(out_dir.glob("*_edgetpu.log"))]
    return process.returncode, "\n".join([process.stdout, process.stderr, *logs])


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


class EdgeTpuCompile:
    """Run after EdgeTpuCheck: compile when the compiler is here, and say so loudly when it is not."""

    name = "compile for edge tpu"

    def run(self, ctx: ConversionContext) -> None:
        checks = ctx.need(ctx.target_checks, "the Edge TPU check")
        report = ctx.need(checks.edgetpu, "the Edge TPU report")
        compiler = shutil.which(COMPILER)
        if compiler is None:
            report.compilation = EdgeTpuCompilation(compiled=False, detail=NOT_ON_PATH)
            checks.summary += "; not compiled for Edge TPU (edgetpu_compiler not on PATH)"
            ctx.notes.append(f"WARNING: {NOT_ON_PATH}")
            return
        artifact = ctx.need(ctx.artifact_path, "the artifact")
        code, output = run_compiler(compiler, artifact, ctx.work_dir / "edgetpu")
        summary = parse_compiler_output(output)
        compiled = ctx.work_dir / "edgetpu" / f"{artifact.stem}_edgetpu.tflite"
        compilation = EdgeTpuCompilation(
            compiled=False,
            detail="",
            compiler_version=summary.version,
            edgetpu_subgraphs=summary.edgetpu_subgraphs,
            total_ops=summary.total_ops,
            ops_on_edgetpu=summary.ops_on_edgetpu,
            ops_on_cpu=summary.ops_on_cpu,
            operations=summary.operations,
        )
        report.compilation = compilation
        if code != 0 or not compiled.is_file():
            compilation.detail = (
                f"not compiled for Edge TPU: {COMPILER} failed (exit {code}): {_last_line(output)}"
            )
            report.compatible = checks.passed = False
            checks.summary = compilation.detail
            refuse(ctx, checks)
        if summary.ops_on_cpu:
            compilation.detail = (
                f"{COMPILER} {summary.version} maps {summary.ops_on_edgetpu} op(s) to the Edge TPU and "
                f"leaves {summary.ops_on_cpu} on the CPU"
            )
            report.compatible = checks.passed = False
            checks.unsupported_ops += [
                UnsupportedOp(
                    op=line.op,
                    layer=f"{line.count} op(s) per {COMPILER}",
                    reason=line.status,
                    consequence="refused",
                )
                for line in summary.operations
                if line.status != MAPPED
            ]
            checks.summary = f"the static check passed, but {compilation.detail}"
            refuse(ctx, checks)
        target = ctx.work_dir / COMPILED_MEMBER
        shutil.copyfile(compiled, target)
        compilation.compiled = True
        compilation.artifact = COMPILED_MEMBER
        on_tpu = summary.ops_on_edgetpu if summary.ops_on_edgetpu is not None else summary.total_ops
        compilation.detail = (
            f"compiled with {COMPILER} {summary.version}: {on_tpu} of {summary.total_ops} ops on the Edge "
            f"TPU in {summary.edgetpu_subgraphs} subgraph(s) ({COMPILED_MEMBER})"
        )
        checks.summary += f"; {compilation.detail}"
        ctx.bundle_files[COMPILED_MEMBER] = target
        ctx.alternatives.append(
            ArtifactAlternative(
                kind="tflite-int8-edgetpu",
                path=COMPILED_MEMBER,
                format=ArtifactFormat.TFLITE,
                precision=Precision.INT8,
                inputs=ctx.inputs,  # the compiler keeps the model's input and output tensors
                outputs=ctx.outputs,
                metrics=None,  # the host cannot run the Edge TPU custom op
                requires_delegate="edgetpu",
            )
        )
