"""The static Edge TPU check: the digits CNN's Coral artifact maps completely; each rule is shown to bite on a
real .tflite edited in one place; a model with an op the Edge TPU cannot run is refused with its report."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import flatbuffers
import pytest
from ai_edge_litert import schema_py_generated as schema
from target_graphs import classifier, save_with_data

from edgefleet.cli import main
from edgefleet.contract.bundle import extract_bundle, verify_bundle
from edgefleet.contract.signing import load_public_key
from edgefleet.contract.target_checks import TargetChecks
from edgefleet.converter.edgetpu_ops import EDGETPU_OPS
from edgefleet.converter.pipeline import ConversionResult
from edgefleet.converter.steps.edgetpu_check import check_edgetpu_graph, edgetpu_checks
from edgefleet.converter.tflite_graph import read_tflite


@pytest.fixture(scope="module")
def coral(
    converted: Callable[[str], ConversionResult],
    key_pair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ConversionResult, bytes]:
    result = converted("coral-usb")
    dest = tmp_path_factory.mktemp("coral") / "bundle"
    manifest = extract_bundle(result.bundle_path, dest, load_public_key(key_pair[1]))
    return result, (dest / manifest.artifact).read_bytes()


def test_digits_coral_artifact_maps_completely(
    coral: tuple[ConversionResult, bytes], key_pair: tuple[Path, Path]
) -> None:
    result, artifact = coral
    checks = result.target_checks
    assert checks is not None and checks.target == "edgetpu" and checks.passed, checks
    report = checks.edgetpu
    assert report is not None and report.compatible and report.first_cpu_op is None
    assert report.subgraphs == 1 and report.io_dtype == "uint8" and not report.model_problems
    assert not checks.unsupported_ops
    graph = read_tflite(artifact)
    assert [(op.op, op.version) for op in report.ops] == [(op.name, op.version) for op in graph.ops]
    assert all(op.runs_on == "edgetpu" and not op.problems for op in report.ops)
    assert {op.op for op in report.ops} <= set(EDGETPU_OPS)
    # layers are named after the ONNX nodes they came from
    assert any("/features/features.0/Conv" in op.layer for op in report.ops)
    manifest = verify_bundle(result.bundle_path, load_public_key(key_pair[1]))
    assert manifest.target_checks == checks


def _repack(model: schema.ModelT) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _op(model: schema.ModelT, index: int) -> schema.OperatorT:
    return model.subgraphs[0].operators[index]


def _code(model: schema.ModelT, index: int) -> schema.OperatorCodeT:
    return model.operatorCodes[_op(model, index).opcodeIndex]


def _tensor(model: schema.ModelT, op: int, output: bool = True, position: int = 0) -> schema.TensorT:
    operator = _op(model, op)
    return model.subgraphs[0].tensors[(operator.outputs if output else operator.inputs)[position]]


def _set_version(m: schema.ModelT) -> None:
    _code(m, 1).version = 6  # CONV_2D v6: compiler 16 cannot even parse it (google-coral/edgetpu#631)


def _leaky_relu(m: schema.ModelT) -> None:
    code = _code(m, 3)  # both MAX_POOL_2D ops share this code
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.LEAKY_RELU


def _float_activation(m: schema.ModelT) -> None:
    _tensor(m, 2).type = schema.TensorType.FLOAT32


def _dynamic(m: schema.ModelT) -> None:
    _tensor(m, 4).shapeSignature = [1, -1, 4, 64]


def _outer_dim(m: schema.ModelT) -> None:
    _tensor(m, 4).shape = [2, 4, 4, 64]


def _int32_weights(m: schema.ModelT) -> None:
    _tensor(m, 7, output=False, position=1).type = schema.TensorType.INT32


def _fused_pool_activation(m: schema.ModelT) -> None:
    _op(m, 3).builtinOptions.fusedActivationFunction = schema.ActivationFunctionType.RELU


@pytest.mark.parametrize(
    ("mutate", "first_cpu", "problem"),
    [
        (_set_version, 1, "version 6 is newer than edgetpu_compiler 16.0 accepts (up to 5)"),
        (_leaky_relu, 3, "LEAKY_RELU is not in the Edge TPU's supported-op list"),
        (_float_activation, 2, "is float32; the Edge TPU computes on int8/uint8 tensors only"),
        (_dynamic, 4, "has a dynamic shape (1,?,4,64)"),
        (_outer_dim, 4, "only the 3 innermost dimensions may be larger than 1"),
        (_int32_weights, 7, "is int32 (8-bit weights; int32 only for bias and shape operands)"),
        (_fused_pool_activation, 3, "fused activation RELU"),
    ],
    ids=[
        "op-version",
        "unsupported-op",
        "float-tensor",
        "dynamic-shape",
        "outer-dimension",
        "int32-weights",
        "fused",
    ],
)
def test_each_rule_names_the_op_and_moves_the_rest_to_the_cpu(
    coral: tuple[ConversionResult, bytes],
    mutate: Callable[[schema.ModelT], None],
    first_cpu: int,
    problem: str,
) -> None:
    model = schema.ModelT.InitFromPackedBuf(bytearray(coral[1]), 0)
    mutate(model)
    report = check_edgetpu_graph(read_tflite(_repack(model)), "uint8")
    assert not report.compatible and report.first_cpu_op == first_cpu
    assert any(problem in p for p in report.ops[first_cpu].problems), report.ops[first_cpu].problems
    assert not any(op.problems for op in report.ops[:first_cpu])
    assert [op.runs_on for op in report.ops] == ["edgetpu"] * first_cpu + ["cpu"] * (
        len(report.ops) - first_cpu
    )
    checks = edgetpu_checks(report)
    assert not checks.passed and checks.unsupported_ops[0].consequence == "refused"
    assert "op(s) after it would run on the CPU" in checks.summary


def test_model_wide_rules(coral: tuple[ConversionResult, bytes]) -> None:
    model = schema.ModelT.InitFromPackedBuf(bytearray(coral[1]), 0)
    model.subgraphs.append(copy.deepcopy(model.subgraphs[0]))
    report = check_edgetpu_graph(read_tflite(_repack(model)), "int8")  # the artifact's I/O is uint8
    assert not report.compatible and report.first_cpu_op is None
    assert report.model_problems[0] == "2 subgraphs: the Edge TPU compiler maps only one"
    assert "model input 'image' is uint8; the profile wants int8" in report.model_problems


def test_coral_refuses_an_op_the_edge_tpu_cannot_run(
    tmp_path: Path, key_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = save_with_data(classifier("LeakyRelu"), tmp_path / "leaky", (32, 1, 8, 8))
    out = tmp_path / "out"
    args = ["convert", str(model), "--profile", "coral-usb", "--calib", str(data), "--out", str(out)]
    code = main([*args, "--name", "leaky", "--key", str(key_pair[0])])
    err = capsys.readouterr().err
    assert code == 2
    assert "REFUSED FOR THIS TARGET" in err and "LEAKY_RELU" in err
    assert err.strip().splitlines()[-1].startswith("edgefleet: error: profile 'coral-usb' refuses the model")
    assert not list(out.glob("*.efb"))
    report_path = out / "leaky-1-coral-usb.target-checks.json"
    checks = TargetChecks.model_validate(json.loads(report_path.read_text()))
    assert not checks.passed and checks.target == "edgetpu"
    (unsupported,) = checks.unsupported_ops
    assert (unsupported.op, unsupported.consequence) == ("LEAKY_RELU", "refused")
    assert "/act/LeakyRelu" in unsupported.layer  # the ONNX layer it came from
    report = checks.edgetpu
    assert report is not None and report.first_cpu_op is not None
    after = report.ops[report.first_cpu_op + 1 :]
    assert after and all(op.runs_on == "cpu" and not op.problems for op in after)  # mappable, but after it
    assert not report.compilation.compiled
