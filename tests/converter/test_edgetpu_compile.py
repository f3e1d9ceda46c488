"""Compiling for the Edge TPU. Coral's edgetpu_compiler cannot be installed here, so these tests put a
stand-in `edgetpu_compiler` on PATH: it takes the real compiler's flags, counts the model's ops and writes
the compiler's stdout, operation log and `*_edgetpu.tflite` (a copy of its input: it cannot build the Edge
TPU custom op). What is verified is everything up to the compiler: the invocation, the parsing of its
output, and what lands in the bundle and on the terminal. The real compiler was not run."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.cli import main
from edgefleet.contract.bundle import extract_bundle, verify_bundle
from edgefleet.contract.signing import load_public_key
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.errors import TargetRefusedError
from edgefleet.converter.pipeline import convert
from edgefleet.converter.steps.edgetpu_compile import COMPILER, parse_compiler_output

# whole conversions or training runs: the full suite runs them, the fast lane (-m "not slow") does not
pytestmark = pytest.mark.slow

FAKE_COMPILER = '''#!{python}
"""Stand-in for edgetpu_compiler 16.0 (test only): same flags, same output format, no Edge TPU code."""
import argparse, json, os, sys
from pathlib import Path
from ai_edge_litert import schema_py_generated as schema

parser = argparse.ArgumentParser()
parser.add_argument("-o", "--out_dir", default=".")
parser.add_argument("-s", "--show_operations", action="store_true")
parser.add_argument("model")
args = parser.parse_args()
Path(os.environ["FAKE_COMPILER_ARGV"]).write_text(json.dumps(sys.argv[1:]))
print("Edge TPU Compiler version 16.0.384591198")
if os.environ.get("FAKE_COMPILER_FAIL"):
    print("ERROR: Didn't find op for builtin opcode 'CONV_2D' version '6'. An older version of this builtin "
          "might be supported. Are you using an old TFLite binary with a newer model?\\n")
    print("ERROR: Registration failed.\\n\\nInvalid model: " + args.model + "\\nModel could not be parsed")
    sys.exit(1)
data = Path(args.model).read_bytes()
model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
names = {{v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}}
ops = [names[max(c.builtinCode, c.deprecatedBuiltinCode)]
       for c in (model.operatorCodes[o.opcodeIndex] for o in model.subgraphs[0].operators)]
unmapped = os.environ.get("FAKE_COMPILER_UNMAPPED", "")
rows, cpu = {{}}, False  # (op, status) -> count, in order of first appearance, as the compiler lists them
for op in ops:  # one partition: the first unsupported op and everything after it stays on the CPU
    cpu = cpu or op == unmapped
    status = "Mapped to Edge TPU"
    if cpu:
        status = "Operation not supported" if op == unmapped else "More than one subgraph is not supported"
    rows[(op, status)] = rows.get((op, status), 0) + 1
rows = [(op, count, status) for (op, status), count in rows.items()]
on_cpu = sum(count for _, count, status in rows if status != "Mapped to Edge TPU")
out = Path(args.out_dir)
out.mkdir(parents=True, exist_ok=True)
stem = Path(args.model).stem
(out / f"{{stem}}_edgetpu.tflite").write_bytes(data)
table = ["Operator                       Count      Status", ""]
table += [f"{{op:<30}} {{count:<10}} {{status}}" for op, count, status in rows]
header = "Edge TPU Compiler version 16.0.384591198\\n"
header += f"Input: {{args.model}}\\nOutput: {{stem}}_edgetpu.tflite\\n\\n"
(out / f"{{stem}}_edgetpu.log").write_text(header + "\\n".join(table) + "\\n")
print("Started a compilation timeout timer of 180 seconds.\\n\\nModel compiled successfully in 41 ms.\\n")
print(f"Input model: {{args.model}}\\nInput size: {{len(data) / 1024:.2f}}KiB")
print(f"Output model: {{out / (stem + '_edgetpu.tflite')}}\\nOutput size: {{len(data) / 1024:.2f}}KiB")
print("On-chip memory used for caching model parameters: 63.25KiB")
print("On-chip memory remaining for caching model parameters: 7.88MiB")
print("Off-chip memory used for streaming uncached model parameters: 0.00B")
print(f"Number of Edge TPU subgraphs: 1\\nTotal number of operations: {{len(ops)}}")
print(f"Operation log: {{out / (stem + '_edgetpu.log')}}\\n")
if on_cpu:
    print("Model successfully compiled but not all operations are supported by the Edge TPU. A percentage "
          "of the model will instead run on the CPU, which is slower. If possible, consider updating your "
          "model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.")
    print(f"Number of operations that will run on Edge TPU: {{len(ops) - on_cpu}}")
    print(f"Number of operations that will run on CPU: {{on_cpu}}\\n")
else:
    print("See the operation log file for individual operation details.")
if args.show_operations:
    print("\\n".join(table))
print("Compilation child process completed within timeout period.\\nCompilation succeeded!")
'''


@pytest.fixture
def fake_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the stand-in first on PATH; returns the file where it records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / COMPILER
    script.write_text(FAKE_COMPILER.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    argv = tmp_path / "compiler-argv.json"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_COMPILER_ARGV", str(argv))
    return argv


@pytest.fixture
def coral_request(make_request: Callable[..., ConversionRequest], tmp_path: Path) -> ConversionRequest:
    return make_request("coral-usb", out=tmp_path / "out", eval=None)


def test_compiled_model_ships_in_the_bundle(
    fake_compiler: Path, coral_request: ConversionRequest, key_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    result = convert(coral_request)
    argv = json.loads(fake_compiler.read_text())
    assert argv[0] == "--out_dir" and "--show_operations" in argv and argv[-1].endswith("model.tflite")
    checks = result.target_checks
    assert checks is not None and checks.passed and checks.edgetpu is not None
    compilation = checks.edgetpu.compilation
    assert compilation.compiled and compilation.compiler_version == "16.0.384591198"
    ops = len(checks.edgetpu.ops)
    assert (compilation.total_ops, compilation.ops_on_edgetpu, compilation.ops_on_cpu) == (ops, ops, 0)
    assert compilation.edgetpu_subgraphs == 1
    assert {line.op for line in compilation.operations} == {op.op for op in checks.edgetpu.ops}
    assert sum(line.count for line in compilation.operations) == ops  # stdout and log table counted once
    assert compilation.artifact == "model_edgetpu.tflite"
    manifest = extract_bundle(result.bundle_path, tmp_path / "unpacked", load_public_key(key_pair[1]))
    (compiled,) = manifest.alternatives
    assert (compiled.kind, compiled.path, compiled.requires_delegate) == (
        "tflite-int8-edgetpu",
        "model_edgetpu.tflite",
        "edgetpu",
    )
    assert compiled.inputs == manifest.inputs and compiled.metrics is None
    assert manifest.artifact == "model.tflite"  # the CPU-runnable model stays the preferred artifact
    # the stand-in copies its input: the shipped file is exactly what the compiler wrote
    shipped = (tmp_path / "unpacked" / "model_edgetpu.tflite").read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == manifest.file("model_edgetpu.tflite").sha256
    assert shipped == (tmp_path / "unpacked" / "model.tflite").read_bytes()


def test_ops_the_compiler_leaves_on_the_cpu_are_refused(
    fake_compiler: Path, coral_request: ConversionRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_COMPILER_UNMAPPED", "FULLY_CONNECTED")
    with pytest.raises(TargetRefusedError, match="the static check passed, but edgetpu_compiler") as info:
        convert(coral_request)
    assert not list(coral_request.out.glob("*.efb"))
    from edgefleet.contract.target_checks import TargetChecks

    checks = TargetChecks.model_validate_json(Path(str(info.value.report_path)).read_text())
    compilation = checks.edgetpu.compilation if checks.edgetpu else None
    assert compilation is not None and compilation.ops_on_cpu == 3  # 2 FULLY_CONNECTED + the QUANTIZE after
    assert [(u.op, u.reason) for u in checks.unsupported_ops] == [
        ("FULLY_CONNECTED", "Operation not supported"),
        ("QUANTIZE", "More than one subgraph is not supported"),
    ]


def test_a_failing_compiler_stops_the_conversion_with_its_message(
    fake_compiler: Path, coral_request: ConversionRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_COMPILER_FAIL", "1")
    with pytest.raises(
        TargetRefusedError, match=r"edgetpu_compiler failed \(exit 1\): Model could not be parsed"
    ):
        convert(coral_request)


def test_without_the_compiler_the_bundle_and_the_cli_say_not_compiled(
    reference_dir: Path,
    key_pair: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = [d for d in os.environ.get("PATH", "").split(os.pathsep) if not (Path(d) / COMPILER).exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    code = main(
        [
            "convert",
            str(reference_dir / "digits_cnn_v1.onnx"),
            "--profile",
            "coral-devboard",
            "--calib",
            str(reference_dir / "calib.npz"),
            "--out",
            str(tmp_path),
            "--key",
            str(key_pair[0]),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "NOT COMPILED FOR EDGE TPU" in captured.err
    assert "target    edgetpu: ok - all 10 ops map to the Edge TPU" in captured.out
    manifest = verify_bundle(tmp_path / "digits_cnn_v1-1-coral-devboard.efb", load_public_key(key_pair[1]))
    assert manifest.target_checks is not None and manifest.target_checks.edgetpu is not None
    compilation = manifest.target_checks.edgetpu.compilation
    assert not compilation.compiled and compilation.detail.startswith("not compiled for Edge TPU:")
    assert not manifest.alternatives and "model_edgetpu.tflite" not in [f.path for f in manifest.files]


PARTIAL_LOG = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 96 ms.

Input model: net.tflite
Input size: 7.02MiB
Output model: out/net_edgetpu.tflite
Output size: 7.14MiB
Number of Edge TPU subgraphs: 1
Total number of operations: 155
Operation log: out/net_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model \
will instead run on the CPU, which is slower.
Number of operations that will run on Edge TPU: 2
Number of operations that will run on CPU: 153

Operator                       Count      Status

TRANSPOSE                      70         Operation not supported
PAD                            1          Mapped to Edge TPU
PAD                            17         More than one subgraph is not supported
CONV_2D                        35         More than one subgraph is not supported
QUANTIZE                       1          Mapped to Edge TPU
QUANTIZE                       1          Operation is otherwise supported, but not mapped due to some \
unspecified limitation
"""


def test_parse_a_partly_mapped_compiler_log() -> None:
    summary = parse_compiler_output(PARTIAL_LOG)
    assert summary.version == "16.0.384591198"
    assert (summary.total_ops, summary.ops_on_edgetpu, summary.ops_on_cpu) == (155, 2, 153)
    assert summary.edgetpu_subgraphs == 1 and summary.output_model == "out/net_edgetpu.tflite"
    assert [(line.op, line.count) for line in summary.operations] == [
        ("TRANSPOSE", 70),
        ("PAD", 1),
        ("PAD", 17),
        ("CONV_2D", 35),
        ("QUANTIZE", 1),
        ("QUANTIZE", 1),
    ]
    assert summary.operations[-1].status.startswith("Operation is otherwise supported, but not mapped")
