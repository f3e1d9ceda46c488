"""The accuracy budget on a model that INT8 breaks: mixed precision keeps the culprit layers in float where
the target allows it (TFLite for the Pi, QDQ ONNX for TensorRT), and the Coral refuses with the culprits
named, the report written and a non-zero exit.

The model is the digits CNN with one output channel of its second conv scaled by 1000 and the next conv's
matching input weights scaled by 1/1000: the float function is unchanged (ReLU is positively homogeneous),
but a per-tensor int8 scale for that activation rounds the other 31 channels to almost nothing - the
outlier-channel failure behind many "accuracy collapsed after INT8" reports.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter
from onnx import numpy_helper

from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import ConversionResult, convert

OUTLIER_SCALE = 1000.0
PLANTED = {"/features/features.2/Conv", "/features/features.5/Conv"}  # the scaled conv and its consumer


@pytest.fixture(scope="module")
def outlier_model(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = onnx.load(str(reference_dir / "digits_cnn_v1.onnx"))
    inits = {init.name: init for init in model.graph.initializer}

    def rescale(name: str, change: Callable[[np.ndarray], None]) -> None:
        array = numpy_helper.to_array(inits[name]).copy()
        change(array)
        inits[name].CopyFrom(numpy_helper.from_array(array, name))

    def up(array: np.ndarray) -> None:
        array[0] *= OUTLIER_SCALE

    def down(array: np.ndarray) -> None:
        array[:, 0] /= OUTLIER_SCALE

    rescale("features.2.weight", up)
    rescale("features.2.bias", up)
    rescale("features.5.weight", down)
    path = tmp_path_factory.mktemp("outlier") / "digits_outlier.onnx"
    onnx.save(model, str(path))
    return path


def test_the_outlier_model_computes_what_the_original_does(outlier_model: Path, reference_dir: Path) -> None:
    with np.load(reference_dir / "eval.npz") as data:
        images = data["image"][:64]
    original = ort.InferenceSession(
        str(reference_dir / "digits_cnn_v1.onnx"), providers=["CPUExecutionProvider"]
    )
    changed = ort.InferenceSession(str(outlier_model), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        changed.run(None, {"image": images})[0],
        original.run(None, {"image": images})[0],
        rtol=1e-3,
        atol=1e-3,
    )


@pytest.fixture(scope="module")
def convert_outlier(
    outlier_model: Path, make_request: Callable[..., ConversionRequest]
) -> Callable[[str], ConversionResult]:
    cache: dict[str, ConversionResult] = {}

    def get(profile: str) -> ConversionResult:
        if profile not in cache:
            cache[profile] = convert(make_request(profile, model=outlier_model, name="outlier"))
        return cache[profile]

    return get


@pytest.mark.slow
def test_rpi4_meets_the_budget_with_the_planted_layers_in_float(
    convert_outlier: Callable[[str], ConversionResult], unpack_artifact: Callable[[ConversionResult], Path]
) -> None:
    result = convert_outlier("rpi4")
    assert result.report is not None and result.report.budget is not None
    budget = result.report.budget
    assert budget.met and budget.attempts[0].drop_points > 50  # full int8 collapses
    assert budget.attempts[0].float_layers == []
    accuracy = result.metrics.accuracy
    assert accuracy is not None and accuracy.drop_points <= result.profile.max_accuracy_drop_points
    assert set(budget.float_layers) >= PLANTED
    assert len(budget.float_layers) <= 4
    # The artifact really keeps those convs in float: a DEQUANTIZE feeds each float island.
    interpreter = Interpreter(model_path=str(unpack_artifact(result)))
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    float_convs = [
        op
        for op in interpreter._get_ops_details()
        if op["op_name"] == "CONV_2D" and details[int(op["outputs"][0])]["dtype"] == np.float32
    ]
    assert len(float_convs) == 2
    assert "DEQUANTIZE" in {op["op_name"] for op in interpreter._get_ops_details()}
    assert any("mixed precision" in note for note in result.notes)


@pytest.mark.slow
def test_tensorrt_qdq_excludes_the_planted_convs_from_quantization(
    convert_outlier: Callable[[str], ConversionResult], unpack_artifact: Callable[[ConversionResult], Path]
) -> None:
    result = convert_outlier("jetson-orin-nano")
    assert result.report is not None and result.report.budget is not None
    assert result.report.budget.met and set(result.report.budget.float_layers) >= PLANTED
    model = onnx.load(str(unpack_artifact(result)))
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        weight_from_dq = node.input[1] in producers and producers[node.input[1]].op_type == "DequantizeLinear"
        assert weight_from_dq == (node.name not in PLANTED), node.name  # float weights only where kept float


@pytest.mark.slow
def test_coral_misses_the_budget_names_the_culprits_and_writes_the_report(
    outlier_model: Path,
    convert_cli: Callable[..., int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    code = convert_cli(outlier_model, "coral-usb", out, "--report-dir", str(tmp_path / "report"))
    stderr = capsys.readouterr().err
    assert code != 0
    assert not list(out.glob("*.efb"))  # no bundle for a missed budget
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    budget = report["budget"]
    assert budget["checked"] and not budget["met"] and not budget["float_fallback_allowed"]
    assert budget["float_layers"] == [] and report["bundle"] is None
    assert PLANTED & set(budget["culprits"])
    for culprit in budget["culprits"]:
        assert culprit in stderr
    assert "cannot run layers in float" in stderr and str(tmp_path / "report" / "report.html") in stderr
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Accuracy budget missed" in html
    assert "[ 1/" in stderr  # the per-step progress lines


@pytest.mark.slow
def test_a_larger_max_drop_accepts_the_coral_artifact(
    outlier_model: Path, make_request: Callable[..., ConversionRequest]
) -> None:
    result = convert(make_request("coral-usb", model=outlier_model, name="outlier-accepted", max_drop=100))
    assert result.report is not None and result.report.budget is not None
    budget = result.report.budget
    assert budget.met and budget.source == "request" and budget.max_drop_points == 100
    assert budget.float_layers == [] and result.bundle_path.is_file()
